"""A small, strict parser of the Prometheus text exposition format (0.0.4), and a scraper for
connectd's admin listener. Loopback only; every read is bounded.

parse(text) -> Exposition: families (name -> Family with type, help, samples) and a flat map
{(sample name, ((label, value), ...) sorted): float}. Anything the format does not allow
(a sample before its family's TYPE, a family declared twice, a repeated series, a malformed
line, a sample whose name fits no declared family) raises AssertionError."""

import http.client
import math
import re

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r"[a-zA-Z_][a-zA-Z0-9_]*"
TYPES = ("counter", "gauge", "histogram", "summary", "untyped")
_SAMPLE = re.compile(r"^(" + NAME + r")(\{(.*)\})? (\S+)( -?\d+)?$")
_LABEL_PAIR = re.compile(r'\s*(' + LABEL + r')="((?:[^"\\\n]|\\\\|\\"|\\n)*)"\s*(,|$)')


def _unescape(v):
    return v.replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\")


def _parse_labels(s, line):
    out = {}
    pos = 0
    while pos < len(s):
        m = _LABEL_PAIR.match(s, pos)
        if not m or m.end() == pos:
            raise AssertionError(f"bad label set {s!r} in {line!r}")
        k, v = m.group(1), _unescape(m.group(2))
        if k in out:
            raise AssertionError(f"label {k} repeated in {line!r}")
        out[k] = v
        pos = m.end()
    return out


def _parse_value(v, line):
    if v in ("+Inf", "Inf"):
        return math.inf
    if v == "-Inf":
        return -math.inf
    if v == "NaN":
        return math.nan
    try:
        return float(v)
    except ValueError:
        raise AssertionError(f"bad sample value {v!r} in {line!r}") from None


class Family:
    def __init__(self, name):
        self.name = name
        self.type = None
        self.help = None
        self.samples = []  # (sample name, labels dict, value)


def key(name, labels=None):
    return (name, tuple(sorted((labels or {}).items())))


class Exposition:
    def __init__(self, text):
        self.text = text
        self.families = {}
        self.samples = {}
        self._parse()

    def _family_for(self, sample):
        if sample in self.families:
            return self.families[sample]
        for suf in ("_bucket", "_sum", "_count"):
            if sample.endswith(suf):
                f = self.families.get(sample[: -len(suf)])
                if f is not None and f.type in ("histogram", "summary"):
                    if suf == "_bucket" and f.type != "histogram":
                        break
                    return f
        raise AssertionError(f"sample {sample} belongs to no declared family")

    def _parse(self):
        assert self.text.endswith("\n"), "exposition does not end with a newline"
        current = None
        for line in self.text.split("\n")[:-1]:
            if line == "":
                raise AssertionError("empty line in the exposition")
            if line.startswith("#"):
                parts = line.split(" ", 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    name = parts[2]
                    assert re.fullmatch(NAME, name), f"bad metric name in {line!r}"
                    f = self.families.get(name)
                    if f is None:
                        f = self.families[name] = Family(name)
                    elif f is not current:
                        raise AssertionError(f"family {name} declared again: {line!r}")
                    current = f
                    rest = parts[3] if len(parts) == 4 else ""
                    if parts[1] == "TYPE":
                        assert f.type is None, f"second TYPE for {name}"
                        assert not f.samples, f"TYPE after samples for {name}"
                        assert rest in TYPES, f"unknown type in {line!r}"
                        f.type = rest
                    else:
                        assert f.help is None, f"second HELP for {name}"
                        f.help = rest
                continue
            m = _SAMPLE.match(line)
            if not m:
                raise AssertionError(f"malformed sample line {line!r}")
            sname, labels = m.group(1), _parse_labels(m.group(3) or "", line)
            value = _parse_value(m.group(4), line)
            f = self._family_for(sname)
            assert f.type is not None, f"sample {sname} before the TYPE of {f.name}"
            assert f is current, f"sample {sname} not next to its family's other lines"
            k = key(sname, labels)
            assert k not in self.samples, f"series repeated: {line!r}"
            self.samples[k] = value
            f.samples.append((sname, labels, value))

    # ---- reading ----

    def get(self, name, **labels):
        """The value of exactly this series; AssertionError when absent."""
        k = key(name, labels)
        if k not in self.samples:
            have = sorted(lbl for (n, lbl) in self.samples if n == name)
            raise AssertionError(f"no series {name}{labels}; have {have}")
        return self.samples[k]

    def has(self, name, **labels):
        return key(name, labels) in self.samples

    def series(self, name, label):
        """{value of label: sample value} for every series of name (one label varying)."""
        out = {}
        for (n, lbls), v in self.samples.items():
            if n == name:
                d = dict(lbls)
                out[d.get(label)] = v
        return out

    def series_by(self, name):
        """{labels tuple: value} for every series of sample name."""
        return {lbls: v for (n, lbls), v in self.samples.items() if n == name}

    def type_of(self, name):
        return self.families[name].type

    def monotonic_samples(self):
        """Every sample that must never decrease: the series of counter families, and the
        _bucket, _count and _sum of histograms. {key: value}"""
        out = {}
        for f in self.families.values():
            if f.type in ("counter", "histogram"):
                for sname, labels, v in f.samples:
                    out[key(sname, labels)] = v
        return out

    def histogram(self, name):
        """(buckets [(le float, cumulative count)], count, sum) of histogram family name."""
        f = self.families[name]
        assert f.type == "histogram", f"{name} is a {f.type}"
        buckets = []
        count = total = None
        for sname, labels, v in f.samples:
            if sname == name + "_bucket":
                assert set(labels) == {"le"}, f"{sname} labels {labels}"
                buckets.append((_parse_value(labels["le"], sname), v))
            elif sname == name + "_count":
                count = v
            elif sname == name + "_sum":
                total = v
            else:
                raise AssertionError(f"unexpected sample {sname} in histogram {name}")
        assert count is not None and total is not None, f"{name}: no _count or _sum"
        return buckets, count, total


def parse(text):
    return Exposition(text)


def http_get(port, path="/metrics", host="127.0.0.1", timeout=5.0, headers=None):
    """GET over a fresh connection (no proxy settings consulted). Returns (status, headers
    dict lower-cased, body bytes)."""
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        body = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, body
    finally:
        c.close()


def scrape_text(port, host="127.0.0.1", timeout=5.0):
    status, hdrs, body = http_get(port, "/metrics", host, timeout)
    assert status == 200, f"GET /metrics: {status} {body[:300]!r}"
    ctype = hdrs.get("content-type", "")
    assert ctype.startswith("text/plain") and "version=0.0.4" in ctype, ctype
    assert int(hdrs.get("content-length", "-1")) == len(body), "Content-Length disagrees"
    return body.decode("utf-8")


def scrape(port, host="127.0.0.1", timeout=5.0):
    return parse(scrape_text(port, host, timeout))


def decreases(before, after):
    """Monotonic samples that went down from exposition before to after: [(key, old, new)].
    A series present only in after (a refusal pair seen for the first time) is fine; one that
    disappeared counts as going down (to nothing)."""
    a, b = before.monotonic_samples(), after.monotonic_samples()
    out = []
    for k, v in a.items():
        if k not in b:
            out.append((k, v, None))
        elif b[k] < v:
            out.append((k, v, b[k]))
    return out
