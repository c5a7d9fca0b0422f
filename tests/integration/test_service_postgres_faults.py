"""The key service on a PostgreSQL: passwords in the URL must stay out of the log.

Needs `cargo build -p keygate-tools` (target/debug/keygate) and Debian's postgresql package.
"""

from __future__ import annotations

import pytest

from support.service import KEYGATE, Postgres, Service, free_port, run_keygate, sha256_hex

if not KEYGATE.exists():
    raise RuntimeError(f"{KEYGATE} is missing: run cargo build -p keygate-tools")


@pytest.fixture(scope="module")
def pg():
    server = Postgres().start()
    yield server
    server.stop()


_databases = iter(range(1, 10_000))


@pytest.fixture
def db(pg):
    return pg.createdb(f"faults{next(_databases)}")


@pytest.fixture
def services(tmp_path):
    started = []

    def start(db, **opts):
        s = Service(db, tmp_path, **opts)
        started.append(s)
        return s.start()

    yield start
    for s in started:
        s.stop()


def test_a_password_in_the_database_url_stays_out_of_the_log(services, pg, db):
    secret, other = "pw-in-userinfo-7f3a", "pw-in-query-19bc"
    url = db.replace("postgres://kg@", f"postgres://kg:{secret}@") + f"?password={other}"
    s = services(url)
    line = next(line for line in s.lines if line.startswith("keygate serve: admin"))
    assert line.rstrip().endswith(f"db {db.replace('kg@', 'kg:***@')}?password=***"), line
    assert secret not in s.output() and other not in s.output()
    # A database that cannot be reached: the one-line error names the URL without them.
    port = free_port()
    for bad in [f"postgres://kg:{secret}@127.0.0.1:{port}/x", f"postgres://kg@127.0.0.1:{port}/x?password={other}"]:
        p = run_keygate("serve", "--db", bad, "--admin-listen", "127.0.0.1:0", "--filter-listen", "127.0.0.1:0",
                        env={"KEYGATE_ADMIN_TOKEN_SHA256": sha256_hex("kg_x")})
        assert p.returncode != 0 and "cannot open database postgres://kg" in p.stderr, p.stderr
        assert secret not in p.stderr + p.stdout and other not in p.stderr + p.stdout, p.stderr
