"""The task assistant: an agent whose tools keep each user's task list in the database.

Tell it "Create a task: Review Q4 budget"; come back hours later, in a new session on the
same conversation, and say "Mark it complete": the conversation (with the task the tool
created) and the task list both outlive the session. Tasks live in their own table,
`example_tasks`, next to chatserver's, written through the server's Store.

Run it (from the repository root, after `pip install -e .`) with any OpenAI-compatible model:

    CHATSERVER_OPENAI_API_KEY=sk-... .venv/bin/python examples/task_agent.py

then, as alice (a session that lasts 4 hours of inactivity):

    curl -s -H 'Authorization: Bearer alice' http://127.0.0.1:8000/sessions \
      -d '{"metadata": {"timeout_policy": "lenient"}}'        # note the session "id"
    curl -N -H 'Authorization: Bearer alice' -H 'X-Session-Id: <session id>' \
      http://127.0.0.1:8000/chatkit -d '{"type":"threads.create","params":{"input":{"content":
      [{"type":"input_text","text":"Create a task: Review Q4 budget"}]}}}'  # note the thread id
    curl -N -H 'Authorization: Bearer alice' -H 'X-Session-Id: <session id>' \
      http://127.0.0.1:8000/chatkit -d '{"type":"threads.add_user_message","params":{
      "thread_id":"<thread id>","input":{"content":[{"type":"input_text",
      "text":"Mark it complete"}]}}}'

The database is SQLite in ./task_agent.db (the bearer tokens `alice` and `bob` are two users).
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
import uvicorn
from pydantic import BaseModel, field_validator
from starlette.applications import Starlette

from chatserver import (
    Clock,
    OpenAIChatServer,
    RequestContext,
    Settings,
    Store,
    ToolError,
    create_app,
    tool,
)

# The application's own table; a real application would add it with an alembic migration.
metadata = sa.MetaData()
tasks = sa.Table(
    "example_tasks",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("user_id", sa.String, nullable=False, index=True),
    sa.Column("title", sa.String, nullable=False),
    sa.Column("done", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("completed_at", sa.DateTime(timezone=True)),
)


class Task(BaseModel):
    id: int
    title: str
    done: bool
    created_at: datetime
    completed_at: datetime | None = None

    @field_validator("created_at", "completed_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        # Times are stored in UTC; SQLite hands them back without their time zone.
        return value.replace(tzinfo=UTC) if value and value.tzinfo is None else value


async def user_tasks(store: Store, user_id: str) -> list[Task]:
    async with store.read() as conn:
        rows = await conn.execute(
            sa.select(tasks).where(tasks.c.user_id == user_id).order_by(tasks.c.id)
        )
        return [Task.model_validate(row, from_attributes=True) for row in rows]


@tool
async def list_tasks(context: RequestContext) -> list[Task]:
    """The user's tasks, open and done."""
    return await user_tasks(context.store, context.user_id)


@tool
async def create_task(context: RequestContext, title: str) -> Task:
    """Add a task to the user's list."""
    values = {
        "user_id": context.user_id,
        "title": title,
        "done": False,
        "created_at": context.clock.now(),
    }
    # Writes go through the Store: on SQLite it has the one writer connection.
    async with context.store.write(f"tasks:{context.user_id}") as conn:
        row = await conn.execute(sa.insert(tasks).values(values).returning(tasks))
        return Task.model_validate(row.one(), from_attributes=True)


@tool
async def complete_task(context: RequestContext, task_id: int) -> Task:
    """Mark one of the user's tasks as done."""
    async with context.store.write(f"tasks:{context.user_id}") as conn:
        row = await conn.execute(
            sa.update(tasks)
            .where(tasks.c.id == task_id, tasks.c.user_id == context.user_id)
            .values(done=True, completed_at=context.clock.now())
            .returning(tasks)
        )
        done = row.one_or_none()
    if done is None:
        raise ToolError(f"The user has no task {task_id}; list_tasks shows their tasks.")
    return Task.model_validate(done, from_attributes=True)


class TaskAgent(OpenAIChatServer):
    system_prompt = (
        "You manage the user's task list with your tools. Create, list and complete tasks "
        "when asked; when the user refers to a task, use its id from earlier tool results or "
        "from list_tasks. Answer in one short sentence."
    )
    tools = (list_tasks, create_task, complete_task)

    async def start(self) -> None:
        async with self.store.write() as conn:
            await conn.run_sync(metadata.create_all)
        await super().start()


def build_app(settings: Settings, *, clock: Clock | None = None) -> Starlette:
    return create_app(TaskAgent(Store(settings.database_url), settings, clock=clock), migrate=True)


def main() -> None:
    settings = Settings(
        database_url="sqlite+aiosqlite:///./task_agent.db", bearer_tokens="alice:alice,bob:bob"
    )
    uvicorn.run(build_app(settings), host=settings.host, port=settings.port)


if __name__ == "__main__":
    main()
