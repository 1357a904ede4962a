"""A kept session (a session advisory lock, a LISTEN) whose server connection dies: what a database
failover does to publish's and the relay's leadership. The server ends the backend (pg_terminate_backend,
as a dying primary does); asyncpg, not suara, decides what the pooled connection then looks like."""

from __future__ import annotations

from suara.runtime.database import Database, connect
from tests.support.waiting import poll_until


async def test_a_pooled_session_whose_backend_died_reads_as_closed_and_goes_back_to_the_pool(db_url: str) -> None:
    db = await Database.open(db_url, size=1, application="suara-test-session")
    try:
        session = await db.session()
        pid = await session.fetchval("SELECT pg_backend_pid()")
        async with connect(db_url) as other:
            assert await other.fetchval("SELECT pg_terminate_backend($1)", pid) is True

        async def closed() -> bool:
            return session.is_closed()  # asyncpg detaches the proxy once it sees the socket close

        await poll_until(closed, "the session seen closed")
        await db.release(session)  # already back in the pool: nothing to do, nothing raised
        await session.close()
        # The pool's only slot is usable again: a new connection, a new backend.
        assert await db.fetchval("SELECT pg_backend_pid()") != pid
    finally:
        await db.close()
