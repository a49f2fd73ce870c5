"""user_features: an index on as_of_date

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 18:50:00

``user_features``' key leads with the person, so reading one as-of date's rows was a scan
of every date's: on SQLite the features writer digested the dates it wrote that way, inside
its exclusive write transaction, and the table grows by a training's rows (~2M at 1M
customers) with every training. This index lets the writer count a date's rows and, where
its write did not replace the whole date, read only that date's (``features/store.py``);
``audit verify --deep --since`` narrows by it too. Its cost on the writer's inserts is in
the README (*Audit*, features).

Idempotent, as 0004: each step skips what is already done; so does the downgrade.
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


INDEX = "ix_user_features_as_of_date"


def _indexes() -> set[str]:
    return {i["name"] for i in sa.inspect(op.get_bind()).get_indexes("user_features")}


def upgrade() -> None:
    if INDEX not in _indexes():
        op.create_index(INDEX, "user_features", ["as_of_date"])


def downgrade() -> None:
    if INDEX in _indexes():
        op.drop_index(INDEX, table_name="user_features")
