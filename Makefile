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
# sm_90 SASS plus compute_90 PTX, which the driver JIT-compiles for newer GPUs; warnings are errors
# in the device code (-Werror all-warnings) as in the host code (-Xcompiler)
NVARCH  ?= -gencode arch=compute_90,code=sm_90 -gencode arch=compute_90,code=compute_90
NVFLAGS ?= -O2 -std=c++17 -I. -DKV_CUDA=1 $(NVARCH) -MMD -MP -Werror all-warnings \
           -Xcompiler -Wall,-Wextra,-Werror
# cuBLAS is not linked: kernels/cuda/cublas_load.cu dlopens it when a CUDA backend starts (its
# start-up code would otherwise run before main in every tool, --help included)
NVFLAGS += -DKV_CUBLAS_DIR='"$(CUDA_HOME)/lib64"'
LDLIBS  += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcudart -lstdc++
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/%.o) $(CU_SRC:%.cu=$(BUILD)/%.cu.o)
else
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/%.o)
endif

# MPI (data-parallel kvdistill train, transform/train/dist.h) joins the build when mpicc is on
# PATH; MPI=0 forces it off. Its flags come from Open MPI's wrapper (--showme); with another MPI
# give MPI_CFLAGS and MPI_LDLIBS yourself. Only dist_mpi.c includes mpi.h.
MPICC   ?= $(shell command -v mpicc 2>/dev/null)
MPI     ?= $(if $(MPICC),1,0)
ifeq ($(MPI),1)
ifndef MPI_LDLIBS
MPI_CFLAGS := $(shell $(MPICC) --showme:compile 2>/dev/null)
MPI_LDLIBS := $(shell $(MPICC) --showme:link 2>/dev/null)
endif
ifeq ($(strip $(MPI_LDLIBS)),)
$(warning kvforge: '$(MPICC) --showme:link' gave no flags (not Open MPI?): building without MPI; set MPI_CFLAGS and MPI_LDLIBS to use it)
override MPI := 0
endif
endif
ifeq ($(MPI),1)
CFLAGS  += -DKV_MPI=1
LDLIBS  += $(MPI_LDLIBS)
$(BUILD)/transform/train/dist_mpi.o: CFLAGS += $(MPI_CFLAGS)
endif

# NCCL (GPU gradient sums of data-parallel runs on CUDA, transform/train/dist_nccl.c) joins when
# CUDA and MPI are both in and nccl.h is found; NCCL=0 forces it off
ifeq ($(CUDA)$(MPI),11)
NCCL_H  := $(firstword $(wildcard $(CUDA_HOME)/include/nccl.h /usr/include/nccl.h))
NCCL    ?= $(if $(NCCL_H),1,0)
else
override NCCL := 0
endif
ifeq ($(NCCL),1)
CFLAGS  += -DKV_NCCL=1
LDLIBS  += -lnccl
$(BUILD)/transform/train/dist_nccl.o: CFLAGS += -I$(CUDA_HOME)/include
endif

TOOLS   := $(patsubst cli/%.c,$(BUILD)/bin/%,$(wildcard cli/kv*.c))
CLI_OBJ := $(patsubst %.c,$(BUILD)/%.o,$(filter-out cli/kv%.c,$(wildcard cli/*.c)))
TESTS   := $(patsubst tests/%.c,$(BUILD)/tests/%,$(wildcard tests/test_*.c))
BENCHES := $(patsubst bench/%.c,$(BUILD)/bench/%,$(wildcard bench/*.c))
LIB     := $(BUILD)/libkvforge.a
# LD_PRELOAD fault shim of the crash tests (tests/fault/fault_shim.c, tests/cli_crash.sh): built
# for the tests only, never linked into the tools, and without sanitizers (it runs inside the
# sanitized tools of make asan, which tests/cli_crash.sh starts with verify_asan_link_order=0)
SHIM    := $(BUILD)/tests/fault_shim.so

.PHONY: all test test-gpu asan bench demo setup clean cuda-note format lint fuzz fuzz-build
.SECONDARY:
all: cuda-note $(TOOLS) $(TESTS) $(BENCHES) $(SHIM)

cuda-note:
ifeq ($(CUDA),0)
	@echo "kvforge: CUDA sources skipped (no nvcc or CUDA=0); CPU-only build"
endif
ifeq ($(MPI),0)
	@echo "kvforge: MPI skipped (no mpicc or MPI=0); kvdistill train runs single-process only"
endif

# objects remember the CUDA/SAN/MPI/NCCL mode they were built in: switching modes rebuilds them
FLAGS_STAMP := $(BUILD)/.mode-cuda$(CUDA)-san$(SAN)-mpi$(MPI)-nccl$(NCCL)
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

$(SHIM): tests/fault/fault_shim.c
	@mkdir -p $(dir $@)
	$(CC) -std=c11 -O2 -Wall -Wextra -Werror -fPIC -shared $< -o $@ -ldl

$(BUILD)/bench/%: $(BUILD)/bench/%.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

test: all
	@BUILD=$(BUILD) sh tests/run.sh

# GPU checks: every case of the parity table (kernels/parity.c) on the CUDA backend against the
# CPU reference. Needs a CUDA build and a GPU; without one kvverify says that no CUDA device was
# found and this fails. `make test` never needs a GPU.
test-gpu: all
	$(BUILD)/bin/kvverify kernels
	KV_BIN=$(CURDIR)/$(BUILD)/bin sh tests/gpu/models.sh

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
FUZZ_LIB_SRC := $(sort $(wildcard base/*.c formats/*.c transform/synth/*.c)) transform/train/distill_state.c \
                transform/train/distill_data.c transform/train/distill_chat.c
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

# idempotent: installs only what is missing (Debian packages); clang-format is for make format/lint,
# clang and libclang-rt-14-dev (libFuzzer and the sanitizer runtimes) for make fuzz
SETUP_PKGS := libcjson-dev libzstd-dev libarchive-dev libopenblas-dev zstd clang-format libopenmpi-dev openmpi-bin \
              clang libclang-rt-14-dev
setup:
	@missing=""; for p in $(SETUP_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "kvforge: installing$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $$missing; \
	else echo "kvforge: build dependencies present"; fi

# the tree follows .clang-format: `make format` rewrites in place, `make lint` fails on a difference
FORMAT_SRC = $(shell git ls-files '*.c' '*.h' '*.cu' 2>/dev/null)
format:
	@clang-format -i $(FORMAT_SRC)
lint:
	@clang-format --dry-run -Werror $(FORMAT_SRC) && echo "kvforge: every file follows .clang-format"

clean:
	rm -rf build build-asan $(FUZZ_BUILD)

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
ifneq ($(filter fuzz fuzz-build $(FUZZ_BUILD)/%,$(MAKECMDGOALS)),)
-include $(shell find $(FUZZ_BUILD)/obj -name '*.d' 2>/dev/null)
endif
