"""Alembic environment: always run on a connection handed in by ``puhui.warehouse.engine``."""

from alembic import context

from puhui.warehouse.schema import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
