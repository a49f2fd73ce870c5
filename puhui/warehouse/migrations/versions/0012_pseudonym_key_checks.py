"""pseudonym_key_checks: a keyed check value of the key the pseudonyms were made with

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03 18:40:00

A rotated or mistyped ``PUHUI_PSEUDONYM_KEY`` gave every customer another person_key, and
the histories split without a word. The first run that pseudonymizes now records
HMAC-SHA256(key, label) under a fixed label (never the key, never an unkeyed hash of it);
every later one compares and refuses a different key before it writes a row
(puhui.ingest.pseudonym_check). A warehouse with pseudonyms and no row adopts the key of
its first run after this migration, and says so.

Idempotent, as 0004: a table already there is left alone.
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if "pseudonym_key_checks" not in set(sa.inspect(op.get_bind()).get_table_names()):
        op.create_table(
            "pseudonym_key_checks",
            sa.Column(
                "label",
                sa.String(length=64),
                nullable=False,
                comment="the fixed label the check value is the key's HMAC of",
            ),
            sa.Column(
                "check_value",
                sa.String(length=64),
                nullable=False,
                comment="HMAC-SHA256(PUHUI_PSEUDONYM_KEY, label), hex",
            ),
            sa.Column(
                "adopted",
                sa.Boolean(),
                nullable=False,
                comment="pseudonyms existed before it: taken from the key of the run that wrote it",
            ),
            sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
            sa.PrimaryKeyConstraint("label", name="pk_pseudonym_key_checks"),
        )


def downgrade() -> None:
    # Run again after a downgrade that stopped before alembic stamped it, as 0008's.
    if "pseudonym_key_checks" in set(sa.inspect(op.get_bind()).get_table_names()):
        op.drop_table("pseudonym_key_checks")
