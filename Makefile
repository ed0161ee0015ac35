# connectd — GNU make.
#   make            build ./connectd
#   make run        install missing packages, build, run on conf/proxy.ini in the foreground
#   make check      install missing packages, build, run unit + integration tests + format check
#   make asan       the same tests against an ASan+UBSan build
#   make bench      side-by-side benchmark with tinyproxy and squid (BENCHMARKS.md)
#   make install    PREFIX=/usr/local DESTDIR=

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
LIBS   := -lev -linih -lcares -lyaml -lcrypt -lsystemd -lpthread -lm

PURE_SRC := src/http.c src/config.c src/policy.c src/addr.c src/buf.c src/clients.c src/text.c \
            src/rules.c src/policy_yaml.c src/auth.c src/sha256.c
IO_SRC   := src/main.c src/server.c src/master.c src/net.c src/listener.c src/dns.c src/tunnel.c \
            src/relay.c src/log.c src/auth_service.c src/loopguard.c \
            src/passwd.c src/privdrop.c src/generation.c
UNIT_SRC := $(wildcard tests/unit/test_*.c)

# BUILD is the object directory; the sanitizer build uses its own.
BUILD ?= build/release
BIN   ?= connectd

PURE_OBJ := $(PURE_SRC:%.c=$(BUILD)/%.o)
IO_OBJ   := $(IO_SRC:%.c=$(BUILD)/%.o)
UNIT_BIN := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)

.PHONY: all deps deps-test run check unit integration format format-check lint asan bench install \
        docs-check clean
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
	    -o $@ $< $(PURE_OBJ) -linih -lyaml -lcrypt -lcmocka -lm

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
	clang-format --dry-run --Werror src/*.c include/*.h tests/unit/*.c

# Static checks worth their noise (STYLE.md): cppcheck, and no unbounded string functions.
lint:
	cppcheck --quiet --error-exitcode=1 --enable=warning,portability,performance --std=c11 \
	    --inline-suppr -Iinclude -D_GNU_SOURCE src/
	@! grep -nE '\b(strcpy|strcat|sprintf|vsprintf|strtok|atoi|gets)\(' src/*.c || \
	    { echo "lint: unbounded string function (see STYLE.md)"; exit 1; }

format:
	clang-format -i src/*.c include/*.h tests/unit/*.c

check: deps-test
	$(MAKE) all
	$(MAKE) format-check
	$(MAKE) lint
	$(MAKE) unit
	$(MAKE) integration
	$(MAKE) docs-check

asan: deps-test
	$(MAKE) BUILD=build/asan BIN=build/asan/connectd \
	    OPT="-O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all" \
	    HARDEN="-fPIE" unit integration

# Side-by-side benchmark against tinyproxy and squid (BENCHMARKS.md); not part of `make check`.
bench:
	bench/run

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
	if [ $$fail -ne 0 ]; then echo "docs-check: FAILED"; exit 1; fi; echo "docs-check: ok"

clean:
	rm -rf build $(BIN)
