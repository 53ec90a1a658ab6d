"""Function tools declared in Python: the JSON schema a model sees comes from the signature,
the model's arguments are validated against it, and whatever goes wrong becomes a message
the model can read, never a failed turn.

    @tool
    async def create_task(context: RequestContext, title: str) -> Task:
        '''Create a task for the user.'''

A parameter annotated `RequestContext` receives the turn's context (user id, store, clock)
and is not shown to the model. `Annotated[str, Field(description=...)]` documents a
parameter for the model.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, get_type_hints, overload

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from chatserver.sessions import RequestContext

logger = logging.getLogger(__name__)

ToolFunction = Callable[..., Any]


class ToolError(Exception):
    """Raise from a tool to tell the model what went wrong (`no task 7`): the message is the
    tool's output, and it is not logged as a failure."""


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    description: str
    # The JSON schema of the arguments, as the model sees it.
    parameters: dict[str, Any]
    # What a client shows while the tool runs (ChatKit workflow task title).
    title: str
    function: ToolFunction
    arguments: type[BaseModel]
    context_parameters: tuple[str, ...]

    def definition(self) -> dict[str, Any]:
        """The Chat Completions `tools` entry."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }

    async def __call__(self, arguments: str, context: RequestContext) -> str:
        """Run the tool on the model's JSON arguments; the result is the text the model reads."""
        try:
            parsed = self.arguments.model_validate_json(arguments.strip() or "{}")
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, error['loc'])) or 'arguments'}: {error['msg']}"
                for error in exc.errors(include_url=False)
            )
            return f"Invalid arguments for {self.name}: {problems}"
        kwargs = {name: getattr(parsed, name) for name in type(parsed).model_fields}
        kwargs.update(dict.fromkeys(self.context_parameters, context))
        try:
            if inspect.iscoroutinefunction(self.function):
                result = await self.function(**kwargs)
            else:
                # A plain function may block (files, a sync client): keep it off the event loop.
                result = await asyncio.to_thread(self.function, **kwargs)
        except ToolError as exc:
            return str(exc)
        except Exception as exc:
            logger.exception("tool %s failed", self.name)
            return f"The tool {self.name} failed: {type(exc).__name__}: {exc}"
        return tool_output_text(result)


def tool_output_text(result: Any) -> str:
    if isinstance(result, str):
        return result
    if isinstance(result, BaseModel):
        return result.model_dump_json()
    if isinstance(result, list) and all(isinstance(value, BaseModel) for value in result):
        return json.dumps([value.model_dump(mode="json") for value in result])
    return json.dumps(result, default=str)


@overload
def tool(function: ToolFunction, /) -> Tool: ...


@overload
def tool(
    *, name: str | None = None, description: str | None = None, title: str | None = None
) -> Callable[[ToolFunction], Tool]: ...


def tool(
    function: ToolFunction | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    title: str | None = None,
) -> Tool | Callable[[ToolFunction], Tool]:
    """Make a function (async, or plain and run in a thread) a tool a model can call. The
    name defaults to the function's, the description to its docstring."""

    def make(function: ToolFunction) -> Tool:
        tool_name = name or function.__name__
        hints = get_type_hints(function, include_extras=True)
        fields: dict[str, Any] = {}
        context_parameters = []
        for parameter in inspect.signature(function).parameters.values():
            if parameter.kind not in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY):
                # Arguments arrive by name from the model's JSON object.
                raise TypeError(f"tool {tool_name}: parameter {parameter.name} must be named")
            annotation = hints.get(parameter.name, Any)
            if annotation is RequestContext:
                context_parameters.append(parameter.name)
                continue
            default = ... if parameter.default is parameter.empty else parameter.default
            fields[parameter.name] = (annotation, default)
        arguments = create_model(
            f"{tool_name}_arguments",
            __config__=ConfigDict(extra="forbid"),
            **fields,
        )
        parameters = arguments.model_json_schema()
        parameters.pop("title", None)
        return Tool(
            name=tool_name,
            description=description or inspect.cleandoc(function.__doc__ or "").strip(),
            parameters=parameters,
            title=title or tool_name.replace("_", " ").capitalize(),
            function=function,
            arguments=arguments,
            context_parameters=tuple(context_parameters),
        )

    if function is not None:
        return make(function)
    return make
