#!/usr/bin/env python3
"""What one small durable append costs on this machine's disk: write N bytes, then fdatasync,
2,000 times, in two ways:

- append: the file grows with every write, as RocksDB's WAL does, so fdatasync must also
  write the inode (its size changed);
- overwrite: the same writes over blocks written and synced beforehand (a preallocated or
  recycled WAL), so only the data goes out.

The difference is the price of the WAL growing on every group commit (bench/RESULTS.md,
"Where chatd's time goes"). Runs in a temporary directory under DIR (default: the system's
temporary directory, where bench/run.sh puts chatd's data).

    bench/fdatasync.py [DIR] [--size BYTES] [--count N]
"""
import argparse
import os
import tempfile
import time


def measure(directory, mode, size, count):
    fd, path = tempfile.mkstemp(dir=directory, prefix="fdatasync-")
    try:
        buf = b"x" * size
        if mode == "overwrite":
            os.write(fd, b"\0" * (size * count + 4096))
            os.fsync(fd)
            os.lseek(fd, 0, os.SEEK_SET)
        lat = []
        for _ in range(count):
            start = time.perf_counter()
            os.write(fd, buf)
            os.fdatasync(fd)
            lat.append(time.perf_counter() - start)
    finally:
        os.close(fd)
        os.unlink(path)
    lat.sort()

    def at(q):
        return lat[min(len(lat) - 1, int(q * len(lat)))] * 1e3

    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "p999": at(0.999), "max": lat[-1] * 1e3}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", nargs="?", default=tempfile.gettempdir())
    parser.add_argument("--size", type=int, default=400, help="bytes per append (a small group commit)")
    parser.add_argument("--count", type=int, default=2000)
    args = parser.parse_args()
    print(f"{args.count} x (write {args.size} bytes + fdatasync) in {args.dir}; milliseconds")
    print(f"{'mode':<10} {'p50':>7} {'p90':>7} {'p99':>7} {'p99.9':>7} {'max':>7}")
    # Interleaved, twice each, so a disk that changes pace mid-run shows in both.
    for mode in ["append", "overwrite", "append", "overwrite"]:
        r = measure(args.dir, mode, args.size, args.count)
        print(f"{mode:<10} {r['p50']:7.3f} {r['p90']:7.3f} {r['p99']:7.3f} {r['p999']:7.3f} {r['max']:7.3f}")


if __name__ == "__main__":
    main()
