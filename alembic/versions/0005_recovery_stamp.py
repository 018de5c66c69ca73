"""Reset tokens bound to the address they were mailed to, for good (recovery_stamp).

A plain ADD COLUMN with a default, on SQLite too: no table is rebuilt. Existing users get
an empty stamp, which the next email change replaces; reset tokens issued before this
revision carry none and stop working (they live minutes).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        'user',
        sa.Column('recovery_stamp', sqlmodel.sql.sqltypes.AutoString(length=32), server_default='', nullable=False),
    )


def downgrade() -> None:
    # SQLite >= 3.35 drops a column in place: no rebuild, so AUTOINCREMENT stays.
    op.execute('ALTER TABLE "user" DROP COLUMN recovery_stamp')
