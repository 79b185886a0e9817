"""One of several processes opening the same fresh SQLite files at the same moments: file ``i``
at ``start + i * interval`` on the shared clock. Prints how many connections failed."""

import sys
import time

import sqlalchemy as sa

from oialr.metrics_schema import make_engine


def main(folder: str, n_files: int, start: float, interval: float) -> None:
    failed = 0
    for i in range(n_files):
        time.sleep(max(0.0, start + i * interval - time.time()))
        engine = make_engine(f"sqlite:///{folder}/{i}.db")
        try:
            with engine.connect():
                pass
        except sa.exc.OperationalError:
            failed += 1
        finally:
            engine.dispose()
    print(failed)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]))
