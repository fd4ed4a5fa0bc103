#!/usr/bin/env bash
# heavy's services on the head node of the `ray up` cluster (deploy/README.md, Path A), each under nohup with its
# log in ~/heavy-logs:
#   ray exec deploy/ray/cluster.yaml 'bash ~/heavy/deploy/ray/start_services.sh'
# - the runtime: a router over REPLICAS expert-parallel replicas of EP ranks (Ray actors on the GPU nodes), serving
#   the OpenAI-compatible API on loopback;
# - the API on all interfaces (HEAVY_API_PORT, default 8080) and WORKERS heavy workers using that runtime, worker i
#   showing its metrics on WORKER_METRICS_PORT + i - 1 (/metrics: its jobs, steps, tokens, tool calls).
# Settings are the code's own environment variables (HEAVY_*, RAY_ADDRESS); the defaults below fit cluster.yaml.
set -euo pipefail
REPLICAS=${REPLICAS:-1}
EP=${EP:-8}
WORKERS=${WORKERS:-4}
RUNTIME_PORT=${RUNTIME_PORT:-8000}
WORKER_METRICS_PORT=${WORKER_METRICS_PORT:-8090}
export PATH=$HOME/venv/bin:$PATH
export RAY_ADDRESS=${RAY_ADDRESS:-127.0.0.1:6379}
export HEAVY_HOME=${HEAVY_HOME:-$HOME/heavy-home}
export HEAVY_MODEL=${HEAVY_MODEL:-$HOME/models/kimi-k2-thinking}
export HEAVY_REDIS_URL=${HEAVY_REDIS_URL:-redis://127.0.0.1:6380/0}
export HEAVY_BACKEND=openai
export HEAVY_OPENAI_BASE_URL=http://127.0.0.1:${RUNTIME_PORT}/v1
# RUNTIME_API_KEY, when set: the key the runtime wants (other users of the node reach its loopback port too) and
# the workers send
export HEAVY_OPENAI_API_KEY=${RUNTIME_API_KEY:-}
export HEAVY_API_HOST=${HEAVY_API_HOST:-0.0.0.0}

logs=$HOME/heavy-logs
mkdir -p "$logs" "$HEAVY_HOME"
nohup python -m runtime serve --model "$HEAVY_MODEL" --replicas "$REPLICAS" --ep "$EP" \
    --host 127.0.0.1 --port "$RUNTIME_PORT" >"$logs/runtime.log" 2>&1 &
nohup heavy serve >"$logs/api.log" 2>&1 &
for i in $(seq 1 "$WORKERS"); do
    HEAVY_WORKER_METRICS_PORT=$((WORKER_METRICS_PORT + i - 1)) nohup heavy worker >"$logs/worker-$i.log" 2>&1 &
done
echo "started runtime, API and $WORKERS workers; logs in $logs"
