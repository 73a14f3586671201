#!/usr/bin/env bash
# CUDA paths and GPU numbers in one run on a machine with one NVIDIA GPU (sized for a few minutes; not yet run on a GPU):
#   bash benchmarks/gpu.sh [OUT_DIR]            # default OUT_DIR: benchmarks/results/gpu
# 1. env      versions; bitsandbytes' CUDA NF4 matmul against the dequantized weight.
# 2. ss_fit   `spatialscore fit` + `test` of the tiny default on the GPU in bf16 under ModelParallelStrategy (FSDP2).
# 3. ss_qlora the same with 4-bit NF4 base weights (bitsandbytes CUDA kernels) and LoRA.
# 4. rl_fit   `spatialrl fit`: GRPO steps on a tiny FLUX on the GPU in bf16 under ModelParallelStrategy (FSDP2).
# 5. reward_step  benchmarks/reward_step.py on Qwen2.5-VL-7B's full architecture (random weights), bf16: MFU.
# 6. memory   benchmarks/memory.py, 7B widths with $MEM_LAYERS layers: bf16 vs 4-bit QLoRA peak CUDA memory.
# 7. topk     benchmarks/topk.py at FLUX.1-dev widths ($FLUX_DOUBLE double + $FLUX_SINGLE single blocks), 512 px.
# Each step has its own time limit and log; a failing step does not stop the others. summary.txt lists them.
# Every setting below can be overridden from the environment, e.g. ACCEL=cpu with small sizes for a dry run;
# ONLY="ss_fit rl_fit" runs only the steps named. The CPU dry run (about 8 minutes on 2 cores; topk at FLUX.1-dev
# widths outlasts its limit on a CPU, so it is left out):
#   ONLY="env ss_fit ss_qlora rl_fit reward_step memory" ACCEL=cpu PY=.venv/bin/python SS_STEPS=20 RL_STEPS=2 \
#     PAIRS=1 REPEATS=1 MEM_LAYERS=1 SEVEN_B_LAYERS=1 SEVEN_B_IMAGE=112 bash benchmarks/gpu.sh /tmp/gpu-dry
set -u
cd "$(dirname "$0")/.."
repo=$PWD
out=$(realpath -m "${1:-benchmarks/results/gpu}")
mkdir -p "$out"
export PYTHONPATH="$repo/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
case $PY in */*) PY=$(realpath -s "$PY") ;; esac
ACCEL=${ACCEL:-gpu}
DEVICE=$([ "$ACCEL" = gpu ] && echo cuda || echo cpu)
DTYPE=${DTYPE:-bfloat16}
SS_STEPS=${SS_STEPS:-300}
RL_STEPS=${RL_STEPS:-12}
PAIRS=${PAIRS:-8}
REPEATS=${REPEATS:-3}
MEM_LAYERS=${MEM_LAYERS:-4}
FLUX_DOUBLE=${FLUX_DOUBLE:-2}
FLUX_SINGLE=${FLUX_SINGLE:-4}
FLUX_SIZE=${FLUX_SIZE:-512}
SEVEN_B_LAYERS=${SEVEN_B_LAYERS:-}
SEVEN_B_IMAGE=${SEVEN_B_IMAGE:-}
work=$(mktemp -d)
: >"$out/summary.txt"

step() {
  local name=$1 limit=$2 start rc
  shift 2
  [[ " ${ONLY:-$name} " == *" $name "* ]] || return 0
  start=$(date +%s)
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  rc=$?
  echo "$name rc=$rc $(($(date +%s) - start)) s" | tee -a "$out/summary.txt"
  tail -n 12 "$out/$name.log"
}

step env 120 "$PY" - <<EOF
import torch, transformers, diffusers, peft, lightning, bitsandbytes as bnb
print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__,
      "diffusers", diffusers.__version__, "peft", peft.__version__, "lightning", lightning.__version__,
      "bitsandbytes", bnb.__version__)
device = "$DEVICE"
if device == "cuda":
    print("gpu", torch.cuda.get_device_name(), "capability", torch.cuda.get_device_capability())
torch.manual_seed(0)
layer = bnb.nn.Linear4bit(512, 256, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4")
layer.weight = bnb.nn.Params4bit(torch.randn(256, 512) / 512**0.5, requires_grad=False, quant_type="nf4")
layer = layer.to(device)
x = torch.randn(8, 512, device=device, dtype=torch.bfloat16, requires_grad=True)
y = layer(x)
y.float().pow(2).sum().backward()
w = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state).to(torch.bfloat16)
ref = x.detach() @ w.t()
err = ((y.float() - ref.float()).abs().max() / ref.float().abs().max()).item()
print(f"nf4 matmul on {device}: max rel error vs dequantized weight {err:.2e}; input grad finite:",
      bool(torch.isfinite(x.grad).all()))
assert err < 2e-2, err
EOF

ss_common=(--config "$repo/configs/spatialscore/tiny.yaml" --trainer.enable_progress_bar=false
  --trainer.accelerator "$ACCEL" --trainer.devices 1
  --trainer.strategy=lightning.pytorch.strategies.ModelParallelStrategy --trainer.strategy.data_parallel_size=1 --trainer.strategy.tensor_parallel_size=1
  --trainer.val_check_interval 100 --trainer.max_steps "$SS_STEPS" --trainer.max_time null
  --data.synthetic.train_pairs 1000 --data.synthetic.val_pairs 100 --data.synthetic.test_pairs 200
  --model.model.backbone.dtype "$DTYPE")
mkdir -p "$work/ss" "$work/qlora" "$work/rl"
step ss_fit 300 bash -c 'cd "$1" && shift && "$0" -m spatialscore.cli fit "$@" &&
  "$0" -m spatialscore.cli test "$@" --ckpt_path runs/spatialscore-tiny/checkpoints/last.ckpt' \
  "$PY" "$work/ss" "${ss_common[@]}"

step ss_qlora 300 bash -c 'cd "$1" && shift && "$0" -m spatialscore.cli fit "$@"' "$PY" "$work/qlora" \
  "${ss_common[@]}" --trainer.max_steps 100 \
  --model.model.backbone.quantization 4bit --model.model.lora.rank 8 --model.model.train_vision_tower false

cat >"$work/rl/policy.yaml" <<EOF
model:
  init_args:
    policy:
      path: null
      dtype: $DTYPE
      tiny: {layers: 2, single_layers: 2, heads: 4, latent_channels: 8, vae_channels: [8, 16, 16]}
EOF
step rl_fit 300 bash -c 'cd "$1" && shift && "$0" -m spatialrl.cli fit "$@"' "$PY" "$work/rl" \
  --config "$repo/configs/spatialrl/tiny.yaml" --config "$work/rl/policy.yaml" --trainer.enable_progress_bar=false \
  --trainer.accelerator "$ACCEL" --trainer.devices 1 \
  --trainer.strategy=lightning.pytorch.strategies.ModelParallelStrategy --trainer.strategy.data_parallel_size=1 \
  --trainer.strategy.tensor_parallel_size=1 \
  --trainer.max_steps "$RL_STEPS" --trainer.val_check_interval 6 --trainer.max_time null

seven_b=(--model 7b --device "$DEVICE" --pairs "$PAIRS" --out "$out")
[ -n "$SEVEN_B_IMAGE" ] && seven_b+=(--image-size "$SEVEN_B_IMAGE")
step reward_step 420 "$PY" benchmarks/reward_step.py "${seven_b[@]}" ${SEVEN_B_LAYERS:+--layers "$SEVEN_B_LAYERS"} \
  --repeats "$REPEATS" --variants baseline two_forwards checkpointing_fixed
step memory 300 "$PY" benchmarks/memory.py "${seven_b[@]}" --layers "$MEM_LAYERS" --steps 2 \
  --variants bf16 qlora_4bit
step topk 420 "$PY" benchmarks/topk.py --model flux-dev --device "$DEVICE" --dtype "$DTYPE" --size "$FLUX_SIZE" \
  --double-layers "$FLUX_DOUBLE" --single-layers "$FLUX_SINGLE" --steps 2 --repeats 2 --out "$out/topk_flux-dev"
rm -rf "$work"
cat "$out/summary.txt"
