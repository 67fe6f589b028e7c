# Keel — one GNU make file, no configure. Everything generated goes in build/.
#
#   make deps    install what is missing from Debian (does nothing when all is there)
#   make         build build/keel and build/libkeelrt.a
#   make run     deps, build, train examples/fashion_mlp.nn
#   make test    deps, build, run every test (tests/run.sh); ends with "N passed, N failed"

DEB_PKGS  = re2c bison llvm-19-dev libopenblas-dev zlib1g-dev libcjson-dev dataset-fashion-mnist
LLVM_CONFIG ?= llvm-config-19

CC       ?= cc
WARN     = -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wno-unused-parameter
CFLAGS   ?= -O2 -g
CFLAGS   += -std=c11 -D_GNU_SOURCE $(WARN) -I compiler -I runtime -I build
BLAS_CFLAGS = -I/usr/include/x86_64-linux-gnu/openblas-pthread
LLVM_CFLAGS = $(shell $(LLVM_CONFIG) --cflags 2>/dev/null)
LLVM_LIBS   = $(shell $(LLVM_CONFIG) --ldflags 2>/dev/null) $(shell $(LLVM_CONFIG) --libs 2>/dev/null)
RT_LIBS  = -lopenblas -lz -lcjson -lm -lpthread

RT_SRCS  = $(wildcard runtime/*.c)
RT_OBJS  = $(RT_SRCS:runtime/%.c=build/rt/%.o)
CC_SRCS  = $(wildcard compiler/*.c)
CC_OBJS  = $(CC_SRCS:compiler/%.c=build/cc/%.o) build/cc/lexer.o build/cc/parser.o
LIB_OBJS = $(filter-out build/cc/main.o,$(CC_OBJS))
STDLIB   = $(wildcard stdlib/*.nn)

all: build/keel build/libkeelrt.a

# $(call install_missing,PACKAGES): apt-get install those not installed yet; nothing if none
define install_missing
	@missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi
endef

deps:
	$(call install_missing,$(DEB_PKGS))

build/rt build/cc build/test:
	@mkdir -p $@

# --- runtime library -------------------------------------------------------------------------
build/rt/%.o: runtime/%.c runtime/keelrt.h | build/rt
	$(CC) $(CFLAGS) $(BLAS_CFLAGS) -fPIC -c $< -o $@

build/libkeelrt.a: $(RT_OBJS)
	rm -f $@ && ar rcs $@ $^

# --- front end: re2c and Bison (the lexer needs the parser's token header) --------------------
build/parser.c build/parser.h: grammar/parser.y | build/cc
	bison -Wall -Werror --defines=build/parser.h -o build/parser.c $<

build/lexer.c: grammar/lexer.re | build/cc
	re2c -W --no-generation-date -o $@ $<

build/cc/lexer.o: build/lexer.c build/parser.h compiler/keel.h compiler/ops.def
	$(CC) $(CFLAGS) -Wno-unused-function -Wno-missing-prototypes -c $< -o $@

build/cc/parser.o: build/parser.c build/parser.h compiler/keel.h compiler/ops.def
	$(CC) $(CFLAGS) -Wno-missing-prototypes -Wno-unused-but-set-variable -c $< -o $@

# --- the standard library, embedded ("Do not edit") -------------------------------------------
build/stdlib.inc: $(STDLIB) tools/embed.sh | build/cc
	sh tools/embed.sh $(STDLIB) > $@

# --- compiler ----------------------------------------------------------------------------------
build/cc/stdlib.o: build/stdlib.inc
build/cc/parse.o: build/parser.h
build/cc/%.o: compiler/%.c compiler/keel.h compiler/ops.def runtime/keelrt.h | build/cc
	$(CC) $(CFLAGS) $(LLVM_CFLAGS) $(BLAS_CFLAGS) -c $< -o $@

build/keel: $(CC_OBJS) build/libkeelrt.a
	$(CC) -rdynamic -o $@ $(CC_OBJS) -Wl,--whole-archive build/libkeelrt.a -Wl,--no-whole-archive $(LLVM_LIBS) $(RT_LIBS)

# --- the same compiler under AddressSanitizer and UBSan, for the error tests ----------------
ASAN_CFLAGS = -std=c11 -D_GNU_SOURCE -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer \
              -I compiler -I runtime -I build $(LLVM_CFLAGS) $(BLAS_CFLAGS)
ASAN_OBJS = $(CC_SRCS:compiler/%.c=build/asan/%.o) build/asan/lexer.o build/asan/parser.o \
            $(RT_SRCS:runtime/%.c=build/asan/rt_%.o)

build/asan:
	@mkdir -p $@
build/asan/%.o: compiler/%.c compiler/keel.h compiler/ops.def build/parser.h build/stdlib.inc | build/asan
	$(CC) $(ASAN_CFLAGS) -c $< -o $@
build/asan/rt_%.o: runtime/%.c runtime/keelrt.h | build/asan
	$(CC) $(ASAN_CFLAGS) -c $< -o $@
build/asan/lexer.o: build/lexer.c build/parser.h | build/asan
	$(CC) $(ASAN_CFLAGS) -c $< -o $@
build/asan/parser.o: build/parser.c build/parser.h | build/asan
	$(CC) $(ASAN_CFLAGS) -c $< -o $@
build/asan/keel: $(ASAN_OBJS)
	$(CC) -fsanitize=address,undefined -rdynamic -o $@ $^ $(LLVM_LIBS) $(RT_LIBS)

asan: build/asan/keel

# --- tests ------------------------------------------------------------------------------------
TEST_SRCS = $(wildcard tests/unit/test_*.c)
TEST_BINS = $(TEST_SRCS:tests/unit/%.c=build/test/%)

build/test/%: tests/unit/%.c $(LIB_OBJS) build/libkeelrt.a | build/test
	$(CC) $(CFLAGS) $(BLAS_CFLAGS) -o $@ $< $(LIB_OBJS) build/libkeelrt.a $(LLVM_LIBS) $(RT_LIBS)

build/test/st_compare: tests/parity/compare.c | build/test
	$(CC) $(CFLAGS) -o $@ $< -lcjson -lm

tests: $(TEST_BINS) build/test/st_compare

run: deps all
	./build/keel run examples/fashion_mlp.nn

test: deps all tests asan
	@bash tests/run.sh

clean:
	rm -rf build

.PHONY: all deps run test tests asan clean
.SECONDARY:

# --- benchmark: Keel against PyTorch on the same models and data (bench/, docs/performance.md) --
#
#   make bench-deps  install what the benchmark needs and is missing: Debian's PyTorch, the
#                    OpenMP build of OpenBLAS (PyTorch's sane 2-thread setup), GNU time
#   make bench       build, then bench/run.sh: about 6-8 minutes; prints one table

BENCH_PKGS = python3-torch libopenblas0-pthread libopenblas0-openmp time

bench-deps:
	$(call install_missing,$(BENCH_PKGS))

bench: all bench-deps
	@bash bench/run.sh

.PHONY: bench bench-deps
