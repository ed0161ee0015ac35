# connectd — GNU make.
#   make            build ./connectd
#   make run        install missing packages, build, run on conf/proxy.ini in the foreground
#   make check      install missing packages, build; format, lint, unit tests, a short fuzz run,
#                   integration tests, docs/unit-file checks, then unit + integration under ASan
#   make asan       the unit and integration tests against an ASan+UBSan build
#   make fuzz       each libFuzzer harness for FUZZ_SECONDS (60)
#   make check-valgrind  the integration tests with connectd under valgrind memcheck
#   make bench      side-by-side benchmark with tinyproxy and squid (BENCHMARKS.md)
#   make bench-tls  the HTTPS-proxy listener next to Squid https_port and stunnel+tinyproxy
#   make bench-h2   100 tunnels over one HTTP/2 connection against 100 HTTP/1.1 TLS connections
#   make install    PREFIX=/usr/local DESTDIR=
#   make deb        the Debian package (debian/) in build/deb, checked by lintian
#   make check-deb  build it, then install, upgrade, remove and purge it on this machine (root)

PREFIX  ?= /usr/local
DESTDIR ?=
CC      ?= gcc
PYTHON  ?= /usr/bin/python3
CONFIG  ?= conf/proxy.ini

WARN   := -std=c11 -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wformat=2 \
          -Wvla -Wwrite-strings -Wimplicit-fallthrough -Wundef -Werror
HARDEN := -D_FORTIFY_SOURCE=2 -fstack-protector-strong -fPIE
CPPFLAGS_ALL := -D_GNU_SOURCE -Iinclude $(shell pkg-config --cflags-only-I inih libcares 2>/dev/null | sed 's/-I/-isystem /g')
OPT    ?= -O2 -g
CFLAGS_ALL  = $(OPT) $(WARN) $(HARDEN) $(CFLAGS)
LDFLAGS_ALL = -pie -Wl,-z,relro,-z,now $(LDFLAGS)
LIBS   := -lev -linih -lcares -lyaml -lcrypt -lsystemd -ljansson -lssl -lcrypto -lnghttp2 -lpthread -lm

PURE_SRC := src/http.c src/config.c src/policy.c src/addr.c src/buf.c src/clients.c src/text.c \
            src/rules.c src/policy_yaml.c src/auth.c src/admin_http.c src/obuf.c \
            src/proxy_proto.c
IO_SRC   := src/main.c src/server.c src/master.c src/net.c src/listener.c src/dns.c src/tunnel.c \
            src/request.c src/dial.c src/relay.c src/log.c src/auth_service.c src/loopguard.c \
            src/passwd.c src/privdrop.c src/generation.c src/stats.c src/metrics.c src/admin.c src/tls.c \
            src/transport.c src/h2.c
UNIT_SRC := $(wildcard tests/unit/test_*.c)

# BUILD is the object directory; the sanitizer build uses its own.
BUILD ?= build/release
BIN   ?= connectd

PURE_OBJ := $(PURE_SRC:%.c=$(BUILD)/%.o)
IO_OBJ   := $(IO_SRC:%.c=$(BUILD)/%.o)
UNIT_BIN := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)

.PHONY: all deps deps-test run check unit integration format format-check lint asan bench install \
        docs-check clean fuzz fuzz-short check-valgrind bench-tls
.DEFAULT_GOAL := all

all: $(BIN)

$(BIN): $(PURE_OBJ) $(IO_OBJ)
	$(CC) $(CFLAGS_ALL) $(LDFLAGS_ALL) -o $@ $^ $(LIBS)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS_ALL) $(CPPFLAGS) $(CFLAGS_ALL) -MMD -MP -c -o $@ $<

# Unit tests link only the pure modules: any I/O creeping into them breaks this link.
$(BUILD)/tests/%: tests/unit/%.c $(PURE_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS_ALL) $(CPPFLAGS) $(CFLAGS_ALL) -Wno-missing-prototypes $(LDFLAGS_ALL) \
	    -o $@ $< $(PURE_OBJ) -linih -lyaml -lcrypt -lcrypto -lcmocka -lm

-include $(PURE_OBJ:.o=.d) $(IO_OBJ:.o=.d)

deps:
	@scripts/install-deps build

deps-test:
	@scripts/install-deps test

run: deps
	$(MAKE) all
	./$(BIN) -c $(CONFIG)

unit: $(UNIT_BIN)
	@set -e; for t in $(UNIT_BIN); do echo "== $$t"; $$t; done

integration: $(BIN)
	CONNECTD_BIN=$(abspath $(BIN)) $(PYTHON) -m pytest -q -p no:cacheprovider tests/integration

format-check:
	clang-format --dry-run --Werror src/*.c include/*.h tests/unit/*.c tests/fuzz/*.c

# Static checks worth their noise (STYLE.md): cppcheck, and no unbounded string functions.
lint:
	cppcheck --quiet --error-exitcode=1 --enable=warning,portability,performance --std=c11 \
	    --inline-suppr -Iinclude -D_GNU_SOURCE src/
	@! grep -nE '\b(strcpy|strcat|sprintf|vsprintf|strtok|atoi|gets)\(' src/*.c || \
	    { echo "lint: unbounded string function (see STYLE.md)"; exit 1; }

format:
	clang-format -i src/*.c include/*.h tests/unit/*.c tests/fuzz/*.c

check: deps-test
	$(MAKE) all
	$(MAKE) format-check
	$(MAKE) lint
	$(MAKE) unit
	$(MAKE) fuzz-short
	$(MAKE) integration
	$(MAKE) docs-check
	$(MAKE) asan
	@if [ "$$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then $(MAKE) check-deb; \
	else echo "check: skipping check-deb (it needs root and apt: it installs the package)"; fi

asan: deps-test
	$(MAKE) BUILD=build/asan BIN=build/asan/connectd \
	    OPT="-O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all" \
	    HARDEN="-fPIE" unit integration

# The integration tests against connectd under valgrind memcheck (scripts/valgrind-connectd):
# any memory error or definite leak makes the daemon exit 99, which fails its test. Timing and
# performance tests skip themselves (CONNECTD_VALGRIND). Not part of `make check` (~10 min).
check-valgrind:
	@scripts/install-deps valgrind
	$(MAKE) BUILD=build/valgrind BIN=build/valgrind/connectd OPT="-O1 -g" build/valgrind/connectd
	rm -rf build/valgrind/logs
	CONNECTD_VALGRIND=1 CONNECTD_BIN=$(abspath scripts/valgrind-connectd) \
	    $(PYTHON) -m pytest -q -p no:cacheprovider tests/integration
	@n=$$(ls build/valgrind/logs | wc -l); \
	bad=$$(grep -lE 'ERROR SUMMARY: [1-9]|definitely lost: [1-9]' build/valgrind/logs/* || true); \
	echo "check-valgrind: $$n daemon processes checked; reports with errors: $${bad:-none}"; \
	[ -z "$$bad" ]

# libFuzzer harnesses (tests/fuzz/fuzz_*.c) against the pure modules, built with clang and
# ASan+UBSan into their own object directory. Each harness runs on a copy of its seed corpus
# (tests/fuzz/corpus/NAME/ is only read; new inputs stay in build/fuzz/corpus/NAME/) with its
# dictionary; a crash, leak, UB report or broken invariant stops the run, keeps the input in
# build/fuzz/artifacts/ and prints how to replay it. `make fuzz` runs each FUZZ_SECONDS,
# `make fuzz-short` (part of `make check`) FUZZ_SHORT_SECONDS.
FUZZ_CC            ?= clang
FUZZ_SECONDS       ?= 60
FUZZ_SHORT_SECONDS ?= 20
FUZZ_DIR   := build/fuzz
# NAME:max_len (bytes): room for the request limits and default ones, an ini with its policy
# and users files, a policy file, a users file or credential, an HTTP/2 client's bytes.
FUZZ_TARGETS := fuzz_http:17000 fuzz_config:8192 fuzz_policy:8192 fuzz_auth:4096 fuzz_admin:9000 \
                fuzz_proxy:1024 fuzz_h2:16384
FUZZ_NAMES := $(foreach t,$(FUZZ_TARGETS),$(firstword $(subst :, ,$(t))))
FUZZ_BIN   := $(FUZZ_NAMES:%=$(FUZZ_DIR)/%)
FUZZ_OBJ   := $(PURE_SRC:%.c=$(FUZZ_DIR)/%.o)
FUZZ_CFLAGS := -g -O1 -fno-omit-frame-pointer -fno-sanitize-recover=all $(WARN)
# The config harness serves the policy and users files from its input instead of the disk.
FUZZ_LDFLAGS_fuzz_config := -Wl,--wrap=text_read_file
# The HTTP/2 harness links the real h2.c with nghttp2 and libev (the rest of the daemon is stubs in
# the harness); it sets the clock and timers h2.c sees and watches what h2.c tells nghttp2.
FUZZ_LDFLAGS_fuzz_h2 := $(foreach f,ev_now ev_timer_start ev_timer_stop \
    nghttp2_session_set_stream_user_data nghttp2_session_consume \
    nghttp2_session_consume_connection nghttp2_session_callbacks_set_on_data_chunk_recv_callback,\
    -Wl,--wrap=$(f))
FUZZ_EXTRA_fuzz_h2 := $(FUZZ_DIR)/src/h2.o -lnghttp2 -lev
$(FUZZ_DIR)/fuzz_h2: $(FUZZ_DIR)/src/h2.o

$(FUZZ_DIR)/%.o: %.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(CPPFLAGS_ALL) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link,address,undefined \
	    -MMD -MP -c -o $@ $<

$(FUZZ_BIN): $(FUZZ_DIR)/%: tests/fuzz/%.c $(FUZZ_OBJ)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(CPPFLAGS_ALL) $(FUZZ_CFLAGS) -fsanitize=fuzzer,address,undefined -MMD -MP \
	    -MF $@.d -MT $@ $(FUZZ_LDFLAGS_$(notdir $@)) -o $@ $< $(FUZZ_OBJ) \
	    $(FUZZ_EXTRA_$(notdir $@)) -linih -lyaml -lcrypt -lcrypto -lm

-include $(FUZZ_OBJ:.o=.d) $(FUZZ_DIR)/src/h2.d $(FUZZ_BIN:=.d)

# What a passing run prints from libFuzzer's log: coverage, runs, speed, memory.
FUZZ_SUMMARY := ^\#[0-9]+[[:space:]]+DONE|^Done [0-9]+ runs|^stat::(number|average|new_units|peak)

# $(1): seconds per harness.
define fuzz_run
@set -e; mkdir -p $(FUZZ_DIR)/artifacts $(FUZZ_DIR)/logs; \
for t in $(FUZZ_TARGETS); do \
    name=$${t%%:*}; maxlen=$${t#*:}; work=$(FUZZ_DIR)/corpus/$$name; \
    log=$(FUZZ_DIR)/logs/$$name.log; dict=; \
    mkdir -p $$work; cp -R tests/fuzz/corpus/$$name/. $$work/; \
    [ ! -f tests/fuzz/$$name.dict ] || dict=-dict=tests/fuzz/$$name.dict; \
    echo "== $$name: $(1) s on $$work (log: $$log)"; \
    if UBSAN_OPTIONS=print_stacktrace=1 $(FUZZ_DIR)/$$name $$dict -max_len=$$maxlen \
        -timeout=10 -rss_limit_mb=2048 -max_total_time=$(1) -print_final_stats=1 \
        -artifact_prefix=$(FUZZ_DIR)/artifacts/$$name- $$work > $$log 2>&1; then \
        grep -E '$(FUZZ_SUMMARY)' $$log || true; \
    else \
        tail -n 60 $$log; \
        art=$$(sed -n 's/.*Test unit written to //p' $$log | tail -n 1); \
        echo "fuzz: $$name FAILED; input: $${art:-(none written; see $$log)}"; \
        [ -z "$$art" ] || echo "fuzz: replay with: $(FUZZ_DIR)/$$name $$art"; \
        exit 1; \
    fi; \
done
endef

fuzz: $(FUZZ_BIN)
	$(call fuzz_run,$(FUZZ_SECONDS))

fuzz-short: $(FUZZ_BIN)
	$(call fuzz_run,$(FUZZ_SHORT_SECONDS))

# Side-by-side benchmark against tinyproxy and squid (BENCHMARKS.md); not part of `make check`.
bench:
	bench/run

# What metrics and the admin listener cost (bench/metrics.py: on vs off, scrape, /tunnels).
bench-metrics:
	$(PYTHON) bench/metrics.py

# Through a parent (connectd -> connectd next to squid -> squid) and the PROXY protocol on vs off
# (bench/chain.py).
bench-chain:
	$(PYTHON) bench/chain.py

# connectd's TLS listener next to Squid https_port and stunnel+tinyproxy (bench/tls.py;
# BENCH_TLS_ARGS=--quick for a run of a few minutes).
bench-tls:
	$(PYTHON) bench/tls.py $(BENCH_TLS_ARGS)

# 100 tunnels as CONNECT streams over one HTTP/2 connection against 100 HTTP/1.1 TLS connections,
# connectd only (bench/h2.py; loadgen --h2 links libnghttp2; BENCH_H2_ARGS=--quick for a short run).
bench-h2:
	$(PYTHON) bench/h2.py $(BENCH_H2_ARGS)

# Installs under $(DESTDIR): the binary in $(PREFIX)/sbin; in /etc/connectd the shipped
# config as proxy.ini only when there is none (an operator's file is never replaced) and, always,
# proxy.ini.example and policy.yaml.example; the systemd units with ExecStart= pointing at the
# installed binary; the logrotate file (only when there is none); the man pages.
UNITDIR ?= $(or $(shell pkg-config --variable=systemdsystemunitdir systemd 2>/dev/null), \
             /lib/systemd/system)
MANDIR  ?= $(PREFIX)/share/man

install: $(BIN)
	install -d $(DESTDIR)$(PREFIX)/sbin $(DESTDIR)/etc/connectd $(DESTDIR)$(UNITDIR) \
	    $(DESTDIR)/etc/logrotate.d $(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(MANDIR)/man8
	install -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/sbin/connectd
	install -m 0644 conf/proxy.ini $(DESTDIR)/etc/connectd/proxy.ini.example
	install -m 0644 conf/policy.yaml $(DESTDIR)/etc/connectd/policy.yaml.example
	@set -e; for f in /etc/connectd/proxy.ini:conf/proxy.ini \
	    /etc/logrotate.d/connectd:conf/logrotate.d/connectd; do \
	    dst=$(DESTDIR)$${f%%:*}; src=$${f#*:}; \
	    if [ -e "$$dst" ]; then echo "keeping existing $$dst (the shipped one is $$src)"; \
	    else echo "install -m 0644 $$src $$dst"; install -m 0644 "$$src" "$$dst"; fi; \
	done
	sed 's|/usr/local/sbin/connectd|$(PREFIX)/sbin/connectd|g' conf/connectd.service \
	    > $(DESTDIR)$(UNITDIR)/connectd.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/connectd.service
	install -m 0644 conf/connectd.socket $(DESTDIR)$(UNITDIR)/connectd.socket
	install -m 0644 man/connectd.8 $(DESTDIR)$(MANDIR)/man8/connectd.8
	install -m 0644 man/proxy.ini.5 $(DESTDIR)$(MANDIR)/man5/proxy.ini.5
	@if [ -z "$(DESTDIR)" ]; then echo "next: systemctl daemon-reload &&" \
	    "systemctl enable --now connectd.service (or connectd.socket); see connectd(8)"; fi

# The Debian package (debian/, scripts/build-deb): dpkg-buildpackage -us -uc -b in a clean copy
# of the tree (build/deb/connectd; this tree is never cleaned nor written), with the unit tests
# and a no-root subset of the integration tests at build time (DEB_BUILD_OPTIONS=nocheck skips
# them), then lintian, which must find no error and no warning. Results in build/deb/.
.PHONY: deb check-deb
deb:
	@scripts/install-deps deb
	scripts/build-deb

# make deb, a second build that must give the same bytes, then the package installed with apt on
# this machine, used, upgraded with a changed conffile, removed and purged (scripts/check-deb
# says what is checked). Root only; about 3 minutes. `make check` runs it when it is root.
check-deb:
	@scripts/install-deps deb
	scripts/check-deb

# The documentation and service files, checked in a few seconds without installing anything:
# both man pages lint-clean (mandoc -Tlint; only "referenced manual not found" is let through,
# as it depends on which manuals this machine has installed), every section and key of
# conf/proxy.ini documented in proxy.ini(5), the units valid (systemd-analyze verify, on a copy
# whose ExecStart= is the built ./connectd) with a security exposure below SECURITY_MAX, and
# the logrotate file parsed (logrotate -d), when logrotate is installed.
SECURITY_MAX ?= 2.0

docs-check:
	@set -e; t=$$(mktemp -d); trap 'rm -rf "$$t"' EXIT; fail=0; \
	for tool in mandoc systemd-analyze; do command -v $$tool >/dev/null || \
	    { echo "docs-check: $$tool is missing (make deps-test installs it)"; exit 1; }; done; \
	echo "== mandoc -Tlint man/connectd.8 man/proxy.ini.5"; \
	out=$$(mandoc -Tlint man/connectd.8 man/proxy.ini.5 2>&1 | \
	    grep -v -e 'STYLE: referenced manual not found' -e 'mandoc\.db' || true); \
	if [ -n "$$out" ]; then echo "$$out"; fail=1; else echo "clean"; fi; \
	echo "== proxy.ini(5) documents every section and key of conf/proxy.ini"; \
	for sec in $$(sed -n 's/^\[\([a-z]*\)\].*/\1/p' conf/proxy.ini); do \
	    grep -q "^\.Ss \[$$sec\]" man/proxy.ini.5 || { echo "missing section [$$sec]"; fail=1; }; \
	done; \
	for key in $$(sed -n 's/^\([a-z_]*\) *=.*/\1/p; s/^;   \([a-z_]*\) *=.*/\1/p' conf/proxy.ini); do \
	    grep -q "^\.It Cm $$key\( No\|$$\)" man/proxy.ini.5 || { echo "missing key $$key"; fail=1; }; \
	done; \
	[ $$fail -eq 0 ] && echo "all documented"; \
	bin=$(abspath $(BIN)); [ -x "$$bin" ] || bin=$(PREFIX)/sbin/connectd; \
	[ -x "$$bin" ] || { echo "docs-check: build connectd first (make)"; exit 1; }; \
	sed "s|/usr/local/sbin/connectd|$$bin|g" conf/connectd.service > $$t/connectd.service; \
	cp conf/connectd.socket $$t/connectd.socket; \
	echo "== systemd-analyze verify connectd.service connectd.socket (ExecStart=$$bin)"; \
	for page in $$(sed -n 's/^Documentation=//p' conf/connectd.service conf/connectd.socket | \
	    tr ' ' '\n' | sed -n 's/^man:\(connectd\|proxy\.ini\)(\([0-9]\))$$/\1.\2/p'); do \
	    [ -f man/$$page ] || { echo "Documentation= names man/$$page, which does not exist"; fail=1; }; \
	done; \
	if out=$$(systemd-analyze verify --man=no $$t/connectd.service $$t/connectd.socket 2>&1); \
	then if printf '%s\n' "$$out" | grep -q connectd; then echo "$$out"; fail=1; \
	    else echo "clean"; [ -z "$$out" ] || echo "$$out"; fi; \
	else echo "$$out"; fail=1; fi; \
	echo "== systemd-analyze security --offline=true connectd.service (must be below $(SECURITY_MAX))"; \
	out=$$(systemd-analyze security --no-pager --offline=true $$t/connectd.service 2>&1) || true; \
	line=$$(printf '%s\n' "$$out" | grep 'Overall exposure level' || true); \
	if [ -n "$$line" ]; then \
	    level=$$(printf '%s\n' "$$line" | sed 's/.*: *\([0-9][0-9.]*\).*/\1/'); \
	    echo "$$line"; \
	    if ! awk -v l="$$level" -v m="$(SECURITY_MAX)" 'BEGIN { exit !(l + 0 < m + 0) }'; then \
	        printf '%s\n' "$$out" | grep '✗' || true; \
	        echo "docs-check: exposure $$level is not below $(SECURITY_MAX)"; fail=1; fi; \
	elif printf '%s\n' "$$out" | grep -qi -e 'unrecognized option' -e 'unknown option'; then \
	    echo "skipped: this systemd-analyze has no --offline ($$(systemd-analyze --version | head -1))"; \
	else echo "$$out"; fail=1; fi; \
	lr=$$(command -v logrotate || ls /usr/sbin/logrotate 2>/dev/null || true); \
	if [ -n "$$lr" ]; then \
	    echo "== logrotate -d conf/logrotate.d/connectd"; \
	    install -m 0644 conf/logrotate.d/connectd $$t/logrotate.conf; \
	    if out=$$($$lr -d -s $$t/logrotate.state $$t/logrotate.conf 2>&1) && \
	        ! printf '%s\n' "$$out" | grep -qi '^error'; then echo "clean"; \
	    else echo "$$out"; fail=1; fi; \
	else echo "== logrotate not installed: skipping the check of conf/logrotate.d/connectd"; fi; \
	if command -v promtool >/dev/null; then \
	    echo "== promtool check rules conf/connectd-alerts.yml"; \
	    if out=$$(promtool check rules conf/connectd-alerts.yml 2>&1); then \
	        printf '%s\n' "$$out" | grep 'SUCCESS' || echo "clean"; \
	    else echo "$$out"; fail=1; fi; \
	else echo "== promtool not installed (Debian package prometheus): skipping the check of conf/connectd-alerts.yml"; fi; \
	if [ $$fail -ne 0 ]; then echo "docs-check: FAILED"; exit 1; fi; echo "docs-check: ok"

clean:
	rm -rf build $(BIN)
