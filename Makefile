# Sandbox — the single build entry point.
#
#   make setup     install missing Debian packages (idempotent)
#   make           build the native code and the Elixir application
#   make test      setup + build + every test suite (C, EUnit, ExUnit incl. :slow)
#   make bench     benchmarks, printing BENCH lines (BENCHES="a b" for some)
#   make fuzz      libFuzzer targets, FUZZ_SECONDS each (default 60)
#   make sanitize  the C core's Criterion tests under ASan + UBSan
#   make demo      the demo: sandboxes from examples/counter side by side
#   make cover     every ExUnit test (incl. :slow) with per-module coverage
#
# Every path is a `?=` variable so mix, rebar3 and plain make share this file.

SHELL := /bin/bash

DEB_PACKAGES ?= elixir xxhash erlang-dev erlang-tools erlang-eunit erlang-crypto rebar3 \
	libcriterion-dev libjansson-dev libbsd-dev libxxhash-dev zlib1g-dev \
	clang libclang-rt-14-dev graphviz

PRIV_DIR ?= $(CURDIR)/priv
BUILD_DIR ?= $(CURDIR)/_build/native
FUZZ_SECONDS ?= 60
MIX ?= mix
REBAR3 ?= rebar3

# Erlang paths are looked up once, lazily (erl may not exist before `make setup`).
erl_eval = $(shell erl -noshell -eval '$(1), halt().' 2>/dev/null)
ifeq ($(origin ERTS_INCLUDE_DIR),undefined)
ERTS_INCLUDE_DIR = $(eval ERTS_INCLUDE_DIR := $(call erl_eval,io:format("~ts/erts-~ts/include"$(comma) [code:root_dir()$(comma) erlang:system_info(version)])))$(ERTS_INCLUDE_DIR)
endif
ifeq ($(origin ERL_EI_INCLUDE_DIR),undefined)
ERL_EI_INCLUDE_DIR = $(eval ERL_EI_INCLUDE_DIR := $(call erl_eval,io:format("~ts"$(comma) [code:lib_dir(erl_interface$(comma) include)])))$(ERL_EI_INCLUDE_DIR)
endif
ifeq ($(origin ERL_EI_LIBDIR),undefined)
ERL_EI_LIBDIR = $(eval ERL_EI_LIBDIR := $(call erl_eval,io:format("~ts"$(comma) [code:lib_dir(erl_interface$(comma) lib)])))$(ERL_EI_LIBDIR)
endif
comma := ,

CC ?= cc
# c_src/core and each of its subfolders (c_src/core/cnode, ...) are include paths.
CORE_INC = -Ic_src/core $(patsubst %/,-I%,$(sort $(dir $(wildcard c_src/core/*/*.h))))
CFLAGS_BASE = -std=gnu11 -Wall -Wextra -Werror -fPIC -MMD -MP $(CORE_INC)
ifeq ($(DEBUG),1)
CFLAGS_OPT = -O0 -g3
else
CFLAGS_OPT = -O2 -g
endif
ifeq ($(SANITIZE),1)
CFLAGS_OPT += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
LDFLAGS_SAN = -fsanitize=address,undefined
endif
CFLAGS ?= $(CFLAGS_OPT)
ALL_CFLAGS = $(CFLAGS_BASE) $(CFLAGS)

CORE_LIBS = -lxxhash -lz -ljansson -lbsd
NIF_LIBS = -lxxhash -lz -ljansson
CNODE_LIBS = -L$(ERL_EI_LIBDIR) -lei -ljansson -lbsd -lpthread

CORE_SRC := $(wildcard c_src/core/*.c c_src/core/*/*.c)
NIF_SRC := $(wildcard c_src/nif/*.c)
CNODE_SRC := $(wildcard c_src/cnode/*.c)
TEST_SRC := $(wildcard c_src/test/*.c)
FUZZ_SRC := $(wildcard c_src/fuzz/*.c)
C_FILES := $(wildcard c_src/*/*.c c_src/*/*.h c_src/*/*/*.c c_src/*/*/*.h)

OBJ_DIR = $(BUILD_DIR)/obj$(if $(filter 1,$(SANITIZE)),-san)
CORE_OBJ = $(CORE_SRC:c_src/%.c=$(OBJ_DIR)/%.o)
NIF_OBJ = $(NIF_SRC:c_src/%.c=$(OBJ_DIR)/%.o)
CNODE_OBJ = $(CNODE_SRC:c_src/%.c=$(OBJ_DIR)/%.o)
TEST_OBJ = $(TEST_SRC:c_src/%.c=$(OBJ_DIR)/%.o)

NIF_SO = $(PRIV_DIR)/sandbox_nif.so
CNODE_BIN = $(PRIV_DIR)/sandbox_cnode
CTEST_BIN = $(OBJ_DIR)/ctest

NATIVE_TARGETS = $(NIF_SO) $(if $(CNODE_SRC),$(CNODE_BIN))

.PHONY: all setup native compile test test-run ctest eunit mix-test format-check format \
	sanitize fuzz bench demo cover clean

all: compile

setup:
	@if ! command -v dpkg-query >/dev/null 2>&1; then \
	  echo "setup: dpkg-query not found; install these packages (or their equivalents) by hand: $(DEB_PACKAGES)"; exit 1; \
	fi; \
	missing=""; \
	for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ]; then echo "setup: all required packages are installed"; exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
	  echo "setup: missing Debian packages:$$missing"; \
	  echo "setup: run as root: apt-get update && apt-get install -y$$missing"; \
	  exit 1; \
	fi; \
	echo "setup: installing$$missing"; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null

native: $(NATIVE_TARGETS)

compile:
	$(MIX) compile

$(OBJ_DIR)/nif/%.o: c_src/nif/%.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -fvisibility=hidden -I$(ERTS_INCLUDE_DIR) -c $< -o $@

$(OBJ_DIR)/cnode/%.o: c_src/cnode/%.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -I$(ERL_EI_INCLUDE_DIR) -c $< -o $@

$(OBJ_DIR)/%.o: c_src/%.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c $< -o $@

$(NIF_SO): $(NIF_OBJ) $(CORE_OBJ)
	@mkdir -p $(dir $@)
	$(CC) -shared -fvisibility=hidden $(LDFLAGS_SAN) -o $@ $^ $(NIF_LIBS)

$(CNODE_BIN): $(CNODE_OBJ) $(CORE_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_SAN) -o $@ $^ $(CNODE_LIBS) $(CORE_LIBS)

$(CTEST_BIN): $(TEST_OBJ) $(CORE_OBJ)
	$(CC) $(LDFLAGS_SAN) -o $@ $^ -lcriterion $(CORE_LIBS)

# The Criterion suite of the C core. ERL_ROOT lets tests find real .beam files.
ctest: $(CTEST_BIN)
	ERL_ROOT=$$(erl -noshell -eval 'io:format("~ts",[code:root_dir()]), halt().') $(CTEST_BIN) --jobs 2

eunit:
	$(REBAR3) eunit

mix-test:
	MIX_ENV=test $(MIX) test --include slow

format-check:
	$(MIX) format --check-formatted
	clang-format --dry-run --Werror $(C_FILES)

format:
	$(MIX) format
	clang-format -i $(C_FILES)

test: setup
	$(MAKE) test-run

test-run: native ctest eunit format-check mix-test

sanitize: setup
	$(MAKE) SANITIZE=1 CC=clang ctest

FUZZ_BIN = $(FUZZ_SRC:c_src/fuzz/%.c=$(BUILD_DIR)/fuzz/%)
$(BUILD_DIR)/fuzz/%: c_src/fuzz/%.c $(CORE_SRC)
	@mkdir -p $(dir $@)
	clang -std=gnu11 -O1 -g $(CORE_INC) -fsanitize=fuzzer,address,undefined \
	  -fno-sanitize-recover=undefined -o $@ $< $(CORE_SRC) $(CORE_LIBS)

# Each target runs FUZZ_SECONDS seconds with the installed .beam files as seed corpus.
fuzz: setup $(FUZZ_BIN)
	@mkdir -p $(BUILD_DIR)/fuzz-seed
	@find $$(erl -noshell -eval 'io:format("~ts",[code:root_dir()]), halt().')/lib -name '*.beam' -size -256k | head -400 | xargs -I{} cp {} $(BUILD_DIR)/fuzz-seed/
	@set -e; for f in $(FUZZ_BIN); do \
	  name=$$(basename $$f); mkdir -p $(BUILD_DIR)/fuzz-corpus/$$name; \
	  echo "fuzz: $$name for $(FUZZ_SECONDS)s"; \
	  $$f -max_total_time=$(FUZZ_SECONDS) -max_len=262144 -print_final_stats=1 \
	    $(BUILD_DIR)/fuzz-corpus/$$name $(BUILD_DIR)/fuzz-seed; \
	done

# Each benchmark file runs in a VM of its own, so that none measures the
# state another left behind (thousands of loaded and purged modules make
# code loading itself several times slower).
BENCHES ?= $(patsubst bench/%_bench.exs,%,$(wildcard bench/*_bench.exs))
bench: setup native
	@set -e; for b in $(BENCHES); do BENCH_ONLY=$$b MIX_ENV=bench $(MIX) run bench/run.exs; done

# The main job for a new user: two sandboxes from examples/counter and a
# third from a changed copy, side by side, with timings.
demo: setup native
	MIX_ENV=demo $(MIX) run examples/demo.exs

# Per-module coverage of the library (threshold and exclusions: mix.exs,
# test_coverage); the HTML report goes to cover/. Cover-compiled code runs
# slower, hence the longer default test timeout.
cover: setup native
	MIX_ENV=test $(MIX) test --cover --include slow --timeout 600000

clean:
	rm -rf $(BUILD_DIR) $(NIF_SO) $(CNODE_BIN)

-include $(wildcard $(BUILD_DIR)/obj/*/*.d $(BUILD_DIR)/obj-san/*/*.d $(BUILD_DIR)/obj/*/*/*.d \
  $(BUILD_DIR)/obj-san/*/*/*.d)
