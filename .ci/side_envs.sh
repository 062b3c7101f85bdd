#!/usr/bin/env bash
# Build the side environments the export tests run the real tools in, from the package registries only:
#
#   .side-envs/tf457/       venv: Transformers 4.57.6 (the 4.x line; llama.cpp's converter pins it too)
#   .side-envs/llama-cpp/   llama-cpp-python, compiled here from its sdist, as an importable folder (PYTHONPATH)
#   .side-envs/llama.cpp/   the llama.cpp source from that sdist: convert_hf_to_gguf.py and gguf-py
#   .side-envs/llama-server/ the packages of llama-cpp-python's [server] extra that the project lacks (its fastapi,
#                           uvicorn and pyyaml are the project's), as an importable folder: python -m llama_cpp.server
#   .side-envs/lens/        venv: TransformerLens 4.x
#   .side-envs/node/        node_modules with @huggingface/transformers (transformers.js; its onnxruntime-web holds
#                           the WebAssembly files the static demo page copies: convert.py space --sdk static)
#
# Usage: bash .ci/side_envs.sh [tf457|llama|llama_server|lens|node ...]   (no argument: all of them)
# Each part is skipped when already built; the compiled llama-cpp-python wheel is kept in .side-envs/cache/, so
# a rebuild after `rm -r .side-envs/llama-cpp` takes seconds. Each part prints how long it took.
set -euo pipefail
cd "$(dirname "$0")/.."

LLAMA_CPP_PYTHON=0.3.36
TRANSFORMERS_4=4.57.6
TRANSFORMER_LENS=4.3.0
TRANSFORMERS_JS=4.3.1
TORCH=2.13.0  # the CPU build on this machine's disk; any other version would pull a multi-GB CUDA build

SIDE=.side-envs
CACHE=$SIDE/cache
mkdir -p "$CACHE"
PYTHON=${PYTHON:-python3}

timed() {
    local name=$1
    shift
    local started=$SECONDS
    "$@"
    echo "side env $name: ready in $((SECONDS - started)) s"
}

new_venv() {
    "$PYTHON" -m venv "$1"
    "$1/bin/python" -m pip install --quiet --upgrade pip
    "$1/bin/python" -m pip install --quiet "torch==$TORCH"
}

build_tf457() {
    [ -x $SIDE/tf457/bin/python ] && return
    rm -rf $SIDE/tf457.tmp
    new_venv $SIDE/tf457.tmp
    # sentencepiece and protobuf: imported by llama.cpp's convert_hf_to_gguf.py, which runs in this venv too
    $SIDE/tf457.tmp/bin/python -m pip install --quiet "transformers==$TRANSFORMERS_4" sentencepiece "protobuf<5"
    mv $SIDE/tf457.tmp $SIDE/tf457
}

# The CPU's own instruction sets, except AMX: ggml's AMX kernels crash (SIGSEGV in ggml_backend_amx_mul_mat) on
# this machine for every q8_0 model, llama.cpp's own converter's included. -march=native would switch AMX on.
llama_cpu_options() {
    local options="-DGGML_NATIVE=OFF" feature
    for feature in sse4_2:SSE42 avx:AVX avx2:AVX2 fma:FMA f16c:F16C bmi2:BMI2 avx_vnni:AVX_VNNI avx512f:AVX512 \
        avx512vbmi:AVX512_VBMI avx512_vnni:AVX512_VNNI avx512_bf16:AVX512_BF16; do
        grep -qw "${feature%%:*}" /proc/cpuinfo && options+=" -DGGML_${feature##*:}=ON"
    done
    echo "$options"
}

build_llama() {
    [ -f $SIDE/llama-cpp/llama_cpp/__init__.py ] && [ -f $SIDE/llama.cpp/convert_hf_to_gguf.py ] && return
    local sdist=$CACHE/llama_cpp_python-$LLAMA_CPP_PYTHON.tar.gz
    if [ ! -f "$sdist" ]; then
        "$PYTHON" -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$LLAMA_CPP_PYTHON" -d "$CACHE"
    fi
    rm -rf $SIDE/llama.cpp $CACHE/src && mkdir -p $CACHE/src
    tar -xzf "$sdist" -C $CACHE/src
    mv $CACHE/src/llama_cpp_python-$LLAMA_CPP_PYTHON/vendor/llama.cpp $SIDE/llama.cpp
    rm -rf $CACHE/src
    if ! ls $CACHE/llama_cpp_python-$LLAMA_CPP_PYTHON-*.whl >/dev/null 2>&1; then
        # Only the libraries the bindings load: no multimodal (mtmd) library, no HTTPS; llama.cpp's tests,
        # tools, examples and server are already off when it is built as a subproject.
        CMAKE_ARGS="-DLLAVA_BUILD=OFF -DLLAMA_OPENSSL=OFF $(llama_cpu_options)" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
            "$PYTHON" -m pip wheel --quiet --no-deps "$sdist" -w "$CACHE"
    fi
    rm -rf $SIDE/llama-cpp $SIDE/llama-cpp.tmp
    # An importable folder rather than a venv, so that tests and benchmarks run it in the same process as our
    # model; its other requirements (numpy, jinja2, typing-extensions) are the project's own.
    "$PYTHON" -m pip install --quiet --no-deps --target $SIDE/llama-cpp.tmp \
        $CACHE/llama_cpp_python-$LLAMA_CPP_PYTHON-*.whl "diskcache==5.6.3"
    mv $SIDE/llama-cpp.tmp $SIDE/llama-cpp
}

build_llama_server() {
    [ -f $SIDE/llama-server/sse_starlette/__init__.py ] && return
    rm -rf $SIDE/llama-server.tmp
    "$PYTHON" -m pip install --quiet --no-deps --target $SIDE/llama-server.tmp "sse-starlette==3.7.1" \
        "pydantic-settings==2.16.3" "starlette-context==0.3.6" "python-dotenv==1.2.1"
    rm -rf $SIDE/llama-server
    mv $SIDE/llama-server.tmp $SIDE/llama-server
}

build_lens() {
    [ -x $SIDE/lens/bin/python ] && return
    rm -rf $SIDE/lens.tmp
    new_venv $SIDE/lens.tmp
    $SIDE/lens.tmp/bin/python -m pip install --quiet "transformer-lens==$TRANSFORMER_LENS"
    mv $SIDE/lens.tmp $SIDE/lens
}

build_node() {
    [ -f $SIDE/node/node_modules/@huggingface/transformers/package.json ] && return
    rm -rf $SIDE/node.tmp && mkdir -p $SIDE/node.tmp
    # onnxruntime-node ships its CPU binaries in the npm package; its install script would fetch the CUDA ones
    # from outside the registry (and fail offline), which the documented switch below skips.
    ONNXRUNTIME_NODE_INSTALL=skip npm install --loglevel=error --no-audit --no-fund --prefix $SIDE/node.tmp \
        "@huggingface/transformers@$TRANSFORMERS_JS"
    mv $SIDE/node.tmp $SIDE/node
}

parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(tf457 llama llama_server lens node)
for part in "${parts[@]}"; do
    case $part in
        tf457 | llama | llama_server | lens | node) timed "$part" "build_$part" ;;
        *) echo "unknown side env $part; pick tf457, llama, llama_server, lens or node" >&2 && exit 2 ;;
    esac
done
