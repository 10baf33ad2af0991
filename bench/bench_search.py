#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Search benchmark (issue #6): p50/p99 of catalog_search() at 1M catalog rows.

Generates N rows (default 1,000,000) straight into a catalog SQLite file created by the driver
(`search-bench init`, so the schema and the FTS5 index are the daemon's own; the triggers fill the
index as rows go in), then runs a fixed set of queries through `search-bench run` (search_parse +
catalog_search, unranked and ranked) and prints p50/p99 per query and over all of them. Not a test:
it asserts nothing. See bench/README.md, "Search".

  ninja -C build bench/search-bench
  MUSICFS_BUILD_ROOT=$PWD/build /usr/bin/python3 bench/bench_search.py [--rows 1000000] [--rounds 20]

The catalog is kept in /var/tmp/musicfs-bench/search-<N>.db for reruns (--db, --regenerate).
"""
import argparse
import os
import random
import sqlite3
import subprocess
import sys
import time

COMMON = ["the", "love", "of", "in", "live", "a", "remastered", "my", "you", "me"]
GENRES = ["Rock", "Pop", "Jazz", "Classical", "Electronic", "Hip-Hop", "Folk", "Blues", "Metal", "Soul",
          "Country", "Reggae", "Punk", "Ambient", "Indie Rock", "Alternative Rock", "R&B", "Funk",
          "Latin", "World", "Soundtrack", "Techno", "House", "Disco", "Gospel"]
SYLLABLES = ["ka", "lo", "mi", "ra", "ne", "to", "shi", "vu", "be", "da", "el", "or", "an", "qu", "zi",
             "po", "st", "re", "ja", "fy", "gan", "mor", "lin", "ber", "son", "té", "ño", "ü", "ça"]


def make_vocabulary(rng, n):
    words, seen = list(COMMON), set(COMMON)
    while len(words) < n:
        w = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4)))
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words


class Zipf:
    """Rank r drawn with weight 1/r^s: the first (common) words are very common."""

    def __init__(self, rng, words, s=1.05):
        self.rng, self.words = rng, words
        acc, cum = 0.0, []
        for r in range(1, len(words) + 1):
            acc += 1.0 / r ** s
            cum.append(acc)
        self.cum, self.total = cum, acc

    def word(self):
        import bisect
        return self.words[bisect.bisect_left(self.cum, self.rng.random() * self.total)]

    def phrase(self, lo, hi):
        return " ".join(self.word() for _ in range(self.rng.randint(lo, hi))).title()


def catalog_rows(rows):
    """The rows of the bench catalog, in insertion order (files.id = 1, 2, ...): dicts with rel_path,
    title, artist, album, albumartist, genre, composer, year, track. Deterministic: the same rows on
    every run and for every caller (bench_search_daemon.py makes its origin's files from them)."""
    rng = random.Random(6)
    words = make_vocabulary(rng, 50000)
    z = Zipf(rng, words)
    names = Zipf(random.Random(7), words[len(COMMON):], s=0.9)   # artist names: no stop words
    artists = [names.phrase(1, 3) for _ in range(rows // 50 + 1)]
    composers = [names.phrase(2, 2) for _ in range(2000)]
    album_n = 0
    i = 0
    while i < rows:
        artist = rng.choice(artists)
        album = z.phrase(1, 4)
        year = rng.randint(1950, 2024)
        genre = rng.choice(GENRES)
        album_n += 1
        for track in range(1, 11):
            if i >= rows:
                break
            title = z.phrase(1, 6)
            composer = rng.choice(composers) if rng.random() < 0.3 else None
            yield dict(rel_path=f"{album_n:07d}/{track:02d}.flac", title=title, artist=artist, album=album,
                       albumartist=artist if rng.random() < 0.5 else None, genre=genre, composer=composer,
                       year=year, track=track)
            i += 1


def generate(db, rows, driver, origin=("bench", "file:///bench"), file_stat=None):
    """Makes db with `search-bench init` and fills it with catalog_rows(rows) of one origin
    (name, url). file_stat(i, row) -> (size, mtime_ns) of the row's file; default: no file
    (size 1000 + i, mtime 0)."""
    if os.path.exists(db):
        os.unlink(db)
    subprocess.run([driver, "init", db], check=True)
    con = sqlite3.connect(db)
    con.execute("PRAGMA synchronous = OFF")
    con.execute("INSERT INTO origins (name, url, priority) VALUES (?, ?, 0)", origin)
    start = time.monotonic()
    sql = ("INSERT INTO files (origin_id, rel_path, size, mtime_ns, format, parsed, title, artist, album,"
           " albumartist, genre, composer, year, track) VALUES (1, ?, ?, ?, 'flac', 1, ?, ?, ?, ?, ?, ?, ?, ?)")
    batch = []
    for i, r in enumerate(catalog_rows(rows)):
        size, mtime_ns = file_stat(i, r) if file_stat else (1000 + i, 0)
        batch.append((r["rel_path"], size, mtime_ns, r["title"], r["artist"], r["album"], r["albumartist"],
                      r["genre"], r["composer"], r["year"], r["track"]))
        if len(batch) >= 20000:
            con.executemany(sql, batch)
            con.commit()
            batch = []
            print(f"\r{i + 1} rows, {time.monotonic() - start:.0f} s", end="", file=sys.stderr, flush=True)
    if batch:
        con.executemany(sql, batch)
        con.commit()
    con.execute("INSERT INTO files_fts (files_fts) VALUES ('optimize')")
    con.commit()
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    print(f"\r{rows} rows in {time.monotonic() - start:.0f} s", file=sys.stderr)


def queries_for(words, db):
    con = sqlite3.connect(db)
    # A word of middling and one of low frequency, found in the data itself.
    mid, rare = words[200], words[20000]
    artist_word = con.execute("SELECT artist FROM files WHERE id = 12345").fetchone()[0].split()[0]
    con.close()
    return [
        # very common words (Zipf rank 1-3: several percent of all rows each)
        "the", "love", "of", "the love", "love live",
        # middling and rare words
        mid, rare, f"{mid} {rare}",
        # prefixes
        "lo*", "mi*", "kalo*", f"{mid[:3]}*",
        # fields
        f"artist:{artist_word.lower()}", "title:love", "genre:rock", "album:the", "composer:ka*",
        # phrases
        '"the love"', f'"{mid} {words[201]}"',
        # years and booleans
        "year:1980..1989", "rock year:1980..1989", "love OR you", "love NOT live", "(the OR love) year:1999",
    ]


def percentile(values, p):
    values = sorted(values)
    k = max(0, min(len(values) - 1, int(round(p / 100.0 * (len(values) - 1)))))
    return values[k]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1000000)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--db")
    ap.add_argument("--regenerate", action="store_true")
    args = ap.parse_args()
    root = os.environ.get("MUSICFS_BUILD_ROOT", "build")
    driver = os.path.join(root, "bench", "search-bench")
    if not os.access(driver, os.X_OK):
        sys.exit(f"{driver} not built: ninja -C {root} bench/search-bench")
    db = args.db or f"/var/tmp/musicfs-bench/search-{args.rows}.db"
    os.makedirs(os.path.dirname(db), exist_ok=True)
    words = make_vocabulary(random.Random(6), 50000)
    if args.regenerate or not os.path.exists(db):
        generate(db, args.rows, driver)
    queries = queries_for(words, db)
    size = os.path.getsize(db)

    # One warm-up pass (page cache), then the measured rounds.
    subprocess.run([driver, "run", db, "1", str(args.limit)], input="\n".join(queries), text=True,
                   stdout=subprocess.DEVNULL, check=True)
    out = subprocess.run([driver, "run", db, str(args.rounds), str(args.limit)], input="\n".join(queries),
                         text=True, capture_output=True, check=True).stdout
    samples = {}
    hits = {}
    for line in out.splitlines():
        mode, usec, n, q = line.split("\t", 3)
        samples.setdefault((mode, q), []).append(int(usec) / 1000.0)
        hits[(mode, q)] = int(n)

    print(f"# Search at {args.rows:,} rows ({size / 2**20:.0f} MiB catalog), {args.rounds} rounds, "
          f"limit {args.limit}, load {os.getloadavg()[0]:.1f}\n")
    print("| query | hits (limit) | unranked p50 / p99 ms | ranked p50 / p99 ms |")
    print("|---|---|---|---|")
    for q in queries:
        u, r = samples[("unranked", q)], samples[("ranked", q)]
        print(f"| `{q}` | {hits[('ranked', q)]} | {percentile(u, 50):.2f} / {percentile(u, 99):.2f} | "
              f"{percentile(r, 50):.2f} / {percentile(r, 99):.2f} |")
    for mode in ("unranked", "ranked"):
        allv = [v for (m, _), vs in samples.items() if m == mode for v in vs]
        print(f"\n{mode}: all queries p50 {percentile(allv, 50):.2f} ms, p99 {percentile(allv, 99):.2f} ms, "
              f"max {max(allv):.2f} ms ({len(allv)} samples)")


if __name__ == "__main__":
    main()
