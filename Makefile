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

.PHONY: all deps deps-test run check unit integration format format-check lint asan bench install clean
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

asan: deps-test
	$(MAKE) BUILD=build/asan BIN=build/asan/connectd \
	    OPT="-O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all" \
	    HARDEN="-fPIE" unit integration

# Side-by-side benchmark against tinyproxy and squid (BENCHMARKS.md); not part of `make check`.
bench:
	bench/run

install: $(BIN)
	install -d $(DESTDIR)$(PREFIX)/sbin $(DESTDIR)/etc/connectd
	install -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/sbin/connectd
	install -m 0644 conf/proxy.ini $(DESTDIR)/etc/connectd/proxy.ini.example
	install -m 0644 conf/policy.yaml $(DESTDIR)/etc/connectd/policy.yaml.example

clean:
	rm -rf build $(BIN)
