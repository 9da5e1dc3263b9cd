# kvforge — one static library (everything but cli/), one binary per cli/kv*.c (linked with the
# other cli/*.c helpers), one test binary per tests/test_*.c
CC      ?= cc
BUILD   ?= build
CFLAGS  ?= -O2
CFLAGS  += -std=c11 -Wall -Wextra -Werror -D_GNU_SOURCE -I. -MMD -MP
LDLIBS  := -lcjson -lzstd -larchive -lopenblas -lpthread -lm
SAN_FLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
ifeq ($(SAN),1)
CFLAGS  += $(SAN_FLAGS) -O1 -g
LDFLAGS += $(SAN_FLAGS)
endif

# CUDA joins the build when nvcc is on PATH; CUDA=0 forces it off
NVCC    ?= $(shell command -v nvcc 2>/dev/null)
CUDA    ?= $(if $(NVCC),1,0)
ifeq ($(SAN),1)
CUDA    := 0
endif
LIB_SRC := $(sort $(wildcard base/*.c formats/*.c transform/*/*.c kernels/*.c kernels/cpu/*.c runtime/*.c verify/*.c))
CU_SRC  := $(sort $(wildcard kernels/cuda/*.cu))
ifeq ($(CUDA),1)
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))
CFLAGS  += -DKV_CUDA=1
NVFLAGS ?= -O2 -std=c++17 -I. -DKV_CUDA=1 -arch=sm_90 -MMD -MP -Xcompiler -Wall,-Wextra,-Werror
LDLIBS  += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublas -lcudart -lstdc++
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/%.o) $(CU_SRC:%.cu=$(BUILD)/%.cu.o)
else
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/%.o)
endif

TOOLS   := $(patsubst cli/%.c,$(BUILD)/bin/%,$(wildcard cli/kv*.c))
CLI_OBJ := $(patsubst %.c,$(BUILD)/%.o,$(filter-out cli/kv%.c,$(wildcard cli/*.c)))
TESTS   := $(patsubst tests/%.c,$(BUILD)/tests/%,$(wildcard tests/test_*.c))
BENCHES := $(patsubst bench/%.c,$(BUILD)/bench/%,$(wildcard bench/*.c))
LIB     := $(BUILD)/libkvforge.a

.PHONY: all test asan bench demo setup clean cuda-note fuzz fuzz-build
.SECONDARY:
all: cuda-note $(TOOLS) $(TESTS) $(BENCHES)

cuda-note:
ifeq ($(CUDA),0)
	@echo "kvforge: CUDA sources skipped (no nvcc or CUDA=0); CPU-only build"
endif

# objects remember the CUDA/SAN mode they were built in: switching modes rebuilds them
FLAGS_STAMP := $(BUILD)/.mode-cuda$(CUDA)-san$(SAN)
$(FLAGS_STAMP):
	@mkdir -p $(BUILD) && rm -f $(BUILD)/.mode-* && touch $@

$(BUILD)/%.o: %.c $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/%.cu.o: %.cu $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) -c $< -o $@

$(LIB): $(LIB_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(BUILD)/bin/%: $(BUILD)/cli/%.o $(CLI_OBJ) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

$(BUILD)/tests/%: $(BUILD)/tests/%.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

$(BUILD)/bench/%: $(BUILD)/bench/%.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

test: all
	@BUILD=$(BUILD) sh tests/run.sh

asan:
	@$(MAKE) --no-print-directory BUILD=build-asan SAN=1 CUDA=0 test

bench: all
	@BUILD=$(BUILD) sh bench/run.sh

demo: all
	@BUILD=$(BUILD) sh cli/demo.sh

# ---- fuzzing: libFuzzer targets tests/fuzz/fuzz_*.c (clang; see tests/fuzz/README.md) ----
# make fuzz-build: the targets and their generated seeds in $(FUZZ_BUILD)/
# make fuzz: runs each target, one at a time, for FUZZ_SECONDS (default 60);
#            FUZZ_TARGETS="safetensors index" runs some of them
FUZZ_CC      ?= clang
FUZZ_BUILD   ?= build-fuzz
FUZZ_SECONDS ?= 60
FUZZ_SAN     := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
FUZZ_CFLAGS  := -std=c11 -Wall -Wextra -Werror -D_GNU_SOURCE -I. -g -O1 -MMD -MP $(FUZZ_SAN)
FUZZ_LDLIBS  := -lcjson -lzstd -larchive -lpthread -lm
# only what the targets reach (no kernels, runtime or trainer)
FUZZ_LIB_SRC := $(sort $(wildcard base/*.c formats/*.c transform/synth/*.c)) transform/train/distill_state.c
FUZZ_LIB     := $(FUZZ_BUILD)/libkvforge-fuzz.a
FUZZ_ALL     := $(patsubst tests/fuzz/fuzz_%.c,%,$(wildcard tests/fuzz/fuzz_*.c))
FUZZ_TARGETS ?= $(FUZZ_ALL)
FUZZ_BINS    := $(FUZZ_ALL:%=$(FUZZ_BUILD)/fuzz_%)

$(FUZZ_BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c $< -o $@

$(FUZZ_LIB): $(FUZZ_LIB_SRC:%.c=$(FUZZ_BUILD)/obj/%.o)
	rm -f $@ && ar rcs $@ $^

$(FUZZ_BUILD)/fuzz_%: $(FUZZ_BUILD)/obj/tests/fuzz/fuzz_%.o $(FUZZ_LIB)
	$(FUZZ_CC) $(FUZZ_SAN) -fsanitize=fuzzer $^ $(FUZZ_LDLIBS) -o $@

$(FUZZ_BUILD)/fuzz_seeds: $(FUZZ_BUILD)/obj/tests/fuzz/seeds.o $(FUZZ_LIB)
	$(FUZZ_CC) $(FUZZ_SAN) -fsanitize=fuzzer-no-link $^ $(FUZZ_LDLIBS) -o $@

# seeds made by the project's own writers (tests/fuzz/seeds.c), remade when it changes
$(FUZZ_BUILD)/seeds/.done: $(FUZZ_BUILD)/fuzz_seeds
	rm -rf $(FUZZ_BUILD)/seeds && $(FUZZ_BUILD)/fuzz_seeds $(FUZZ_BUILD)/seeds && touch $@

fuzz-build: $(FUZZ_BINS) $(FUZZ_BUILD)/seeds/.done

fuzz: fuzz-build
	@FUZZ_BUILD=$(FUZZ_BUILD) FUZZ_SECONDS=$(FUZZ_SECONDS) sh tests/fuzz/run.sh $(FUZZ_TARGETS)

# idempotent: installs only what is missing (Debian packages); clang and libclang-rt-14-dev
# (libFuzzer and the sanitizer runtimes) are for make fuzz
SETUP_PKGS := libcjson-dev libzstd-dev libarchive-dev libopenblas-dev zstd clang libclang-rt-14-dev
setup:
	@missing=""; for p in $(SETUP_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "kvforge: installing$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $$missing; \
	else echo "kvforge: build dependencies present"; fi

clean:
	rm -rf build build-asan $(FUZZ_BUILD)

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
ifneq ($(filter fuzz fuzz-build $(FUZZ_BUILD)/%,$(MAKECMDGOALS)),)
-include $(shell find $(FUZZ_BUILD)/obj -name '*.d' 2>/dev/null)
endif
