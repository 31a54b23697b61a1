#!/usr/bin/env bash
# Fault probe of issue 22 (a hostile user's inputs), one line per case: case | exit status | last stderr line.
#   bash benchmarks/fault_probe.sh CODE_DIR WORK_DIR     (CODE_DIR goes on PYTHONPATH; run as root for the tmpfs cases)
# Run it against two checkouts to compare (before/after). Needs $DISTILL_APPS_DATA with digits, MNIST, Fashion-MNIST
# and planetoid/Cora; PY (default: python) is the interpreter.
set -u
CODE=$(cd "$1" && pwd)
W=$2
PY=${PY:-python}
export PYTHONPATH=$CODE FLWR_TELEMETRY_ENABLED=0 OMP_NUM_THREADS=1
export DISTILL_APPS_CACHE=$W/cache
rm -rf "$W"; mkdir -p "$W"; cd "$W"
CLI="$PY -m distill_apps.cli"
D="distill --method dm --ipc 1 --model convnet-d2-w16 --no-eval --no-progress"
row() { # name, rc, stderr file
  local last
  last=$(grep -v -e Warning -e warnings.warn -e '^ *$' -e 'warn(' "$3" | tail -1 | cut -c1-230)
  if grep -q Traceback "$3"; then last="TRACEBACK: $last"; fi
  echo "$1 | $2 | $last"
}
edit() { # file, python expression on h (the header dict), resign(0/1)
  $PY - "$1" "$2" "$3" <<'EOF'
import json, struct, sys, hashlib
path, expr, resign = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
raw = open(path, "rb").read(); n = struct.unpack("<Q", raw[:8])[0]
outer = json.loads(raw[8:8 + n]); h = json.loads(outer["__metadata__"]["distill_apps"])
exec(expr)
outer["__metadata__"]["distill_apps"] = json.dumps(h)
if resign and "distill_apps_sha256" in outer["__metadata__"]:
    outer["__metadata__"]["distill_apps_sha256"] = hashlib.sha256(b"distill-apps container 2\n" + outer["__metadata__"]["distill_apps"].encode()).hexdigest()
hb = json.dumps(outer).encode(); hb += b" " * (-len(hb) % 8)
open(path, "wb").write(struct.pack("<Q", len(hb)) + hb + raw[8 + n:])
EOF
}

# --- 1. header edits of a summary
$CLI $D --steps 3 --out s.safetensors 2>/dev/null >/dev/null
$CLI evaluate s.safetensors --runs 1 --epochs 20 --model convnet-d2-w16 --json > ok.json 2>/dev/null
echo "baseline evaluate | 0 | $(python3 -c "import json;print('accuracy', json.load(open('ok.json'))['accuracy_mean'])")"
for case in 'h["lr"]=50' 'h["num_classes"]="ten"' 'h["image_shape"]="abc"' 'h["meta"]=[1,2]' 'h["label_kind"]="logits"'; do
  for resign in 0 1; do
    cp s.safetensors e.safetensors; edit e.safetensors "$case" $resign
    $CLI evaluate e.safetensors --runs 1 --epochs 20 --model convnet-d2-w16 --json > e.json 2> e.err; rc=$?
    note=""; [ $rc = 0 ] && note="accuracy $(python3 -c "import json;print(json.load(open('e.json'))['accuracy_mean'])")"
    row "summary $case (resign=$resign)" $rc e.err | sed "s/| 0 | .*/| 0 | $note/"
  done
done
# --- 2. checkpoint lr 1 -> 1000
$CLI $D --steps 2 --checkpoint-every 1 --out c.safetensors 2>/dev/null >/dev/null
cp c.ckpt c.orig
for resign in 0 1; do
  cp c.orig c.ckpt; rm -f c.ckpt.prev; edit c.ckpt 'h["optimizers"]["syn"]["param_groups"][0]["lr"]=1000.0' $resign
  $CLI $D --steps 4 --checkpoint-every 1 --resume --out c.safetensors > /dev/null 2> e.err; rc=$?
  row "checkpoint optimiser lr 1->1000 then --resume (resign=$resign)" $rc e.err
done
# --- 3. --out into a read-only folder (a read-only tmpfs: root ignores permission bits)
mkdir -p ro; mount -t tmpfs -o ro,size=1m tmpfs ro
/usr/bin/time -f "%e" -o t.txt $CLI $D --steps 20 --out ro/s.safetensors > /dev/null 2> e.err; rc=$?
row "--out into a read-only folder (took $(cat t.txt)s)" $rc e.err
umount ro
# --- 4. a full disk (a 64 KiB tmpfs)
mkdir -p full; mount -t tmpfs -o size=64k tmpfs full
$PY -c "
import os; fd=os.open('full/filler', os.O_WRONLY|os.O_CREAT)
try:
    while True: os.write(fd, b'0'*4096)
except OSError: pass
"
rm -f full/filler; $PY -c "
import os; fd=os.open('full/filler', os.O_WRONLY|os.O_CREAT)
try:
    os.write(fd, b'0'*(60*1024))
except OSError: pass
"
$CLI distill --method dm --ipc 10 --model convnet-d2-w16 --no-eval --no-progress --steps 2 --out full/s.safetensors > /dev/null 2> e.err; rc=$?
row "--out on a full disk (64 KiB tmpfs, 4 KiB free)" $rc e.err
umount full
# --- 5. silent overwrite
$CLI $D --steps 6 --checkpoint-every 1 --out o.safetensors > /dev/null 2>&1
rm -f o.safetensors o.png  # the checkpoint alone is at stake
$CLI $D --steps 2 --checkpoint-every 1 --out o.safetensors > /dev/null 2> e.err; rc=$?
row "same command without --resume while a 6-step checkpoint exists: checkpoint step now $($PY -c "
import json,struct;raw=open('o.ckpt','rb').read();n=struct.unpack('<Q',raw[:8])[0];print(json.loads(json.loads(raw[8:8+n])['__metadata__']['distill_apps'])['step'])")" $rc e.err
$CLI $D --steps 2 --out x.png > /dev/null 2> e.err; rc=$?
row "--out x.png: x.png is now a $(file -b x.png 2>/dev/null | cut -c1-30)" $rc e.err
$CLI $D --steps 2 --checkpoint-every 1 --out y.ckpt > /dev/null 2> e.err; rc=$?
row "--out y.ckpt --checkpoint-every 1: y.ckpt holds a $($PY -c "
import json,struct;raw=open('y.ckpt','rb').read();n=struct.unpack('<Q',raw[:8])[0];print(json.loads(json.loads(raw[8:8+n])['__metadata__']['distill_apps'])['kind'])" 2>&1 | tail -1)" $rc e.err
$CLI $D --steps 2 --resume --out fresh.safetensors > /dev/null 2> e.err; rc=$?
row "--resume without a checkpoint" $rc e.err
$CLI $D --steps 2 --resume=require --out fresh2.safetensors > /dev/null 2> e.err; rc=$?
row "--resume=require without a checkpoint" $rc e.err
$CLI $D --steps 3 --checkpoint-every 1 --out k.safetensors > /dev/null 2>&1
echo "checkpoints kept after 3 steps | - | $(ls k.ckpt* 2>/dev/null | tr '\n' ' ')"
# --- 6. CPU out of memory under an address-space limit
$PY -c "
import resource, sys
from distill_apps.cli import main
vm = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmSize')) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + (768 << 20), resource.RLIM_INFINITY))
sys.exit(main(sys.argv[1:]))" distill --method dm --ipc 1 --steps 2 --model convnet-d2-w8192 --checkpoint-every 1 --no-eval --no-progress --out oom.safetensors > /dev/null 2> e.err; rc=$?
row "CPU OOM (RLIMIT_AS = VmSize + 768 MB, a 2.4 GB weight in step 0): checkpoint $( [ -f oom.ckpt ] && echo written || echo none)" $rc e.err
/usr/bin/time -f "%M" -o t.txt $CLI distill --method dc --ipc 10 --model convnet-d3-w512 --set batch_real=256 \
  --steps 1 --max-memory 0.9 --checkpoint-every 1 --no-eval --no-progress --out mem.safetensors > /dev/null 2> e.err; rc=$?
row "DC step growing past --max-memory 0.9 (process peak $(( $(tail -1 t.txt) / 1024 )) MB; checkpoint $( [ -f mem.ckpt ] && echo written || echo none))" $rc e.err
# --- 7. bad inputs
$CLI distill --dataset mnist --method random --ipc 1 --no-eval --no-progress --out m.safetensors > /dev/null 2>&1
$CLI evaluate m.safetensors --dataset fashion_mnist --runs 1 --epochs 20 --model convnet-d2-w16 --json > e.json 2> e.err; rc=$?
note=""; [ $rc = 0 ] && note="accuracy $(python3 -c "import json;print(json.load(open('e.json'))['accuracy_mean'])")"
row "MNIST summary evaluated on Fashion-MNIST" $rc e.err | sed "s/| 0 | .*/| 0 | $note/"
$CLI evaluate m.safetensors --dataset fashion_mnist --runs 1 --epochs 20 --model convnet-d2-w16 --force-dataset > /dev/null 2> e.err; rc=$?
row "... with --force-dataset" $rc e.err
$CLI $D --steps 0 --out z.safetensors > /dev/null 2> e.err; rc=$?
row "--steps 0: summary written: $( [ -f z.safetensors ] && echo yes || echo no)" $rc e.err
for a in "--checkpoint-every -2" "--set batch_real=2.7" "--set amp=maybe" "--set batch_real=0" "--set batch_real=-5" "--set lr_img=nan"; do
  rm -f b.safetensors; $CLI $D --steps 2 $a --out b.safetensors > /dev/null 2> e.err; rc=$?
  row "$a: summary written: $( [ -f b.safetensors ] && echo yes || echo no)" $rc e.err
done
$CLI evaluate s.safetensors --runs 0 --model convnet-d2-w16 > e.out 2> e.err; rc=$?
row "evaluate --runs 0 ($(tail -1 e.out | cut -c1-60))" $rc e.err
head -c 400 /dev/urandom > rand.yaml; mkdir -p adir
$CLI $D --steps 2 --config rand.yaml --out b.safetensors > /dev/null 2> e.err; rc=$?
row "--config <random bytes>" $rc e.err
$CLI $D --steps 2 --config adir --out b.safetensors > /dev/null 2> e.err; rc=$?
row "--config <a directory>" $rc e.err
# --- 8. paths and pickles
echo "a secret" > secret.txt
$PY - > e.out 2> e.err <<'EOF'
import os
import torch
from distill_apps.summary import SyntheticSet
arch = {"name": "dcgan-small", "nz": 4, "ngf": 8, "channels": 1, "image_size": [8, 8], "mean": [0.5], "std": [0.2]}
SyntheticSet(x=None, y=torch.arange(10), num_classes=10, image_shape=(1, 8, 8), mean=(0.5,), std=(0.2,),
             params={"z": torch.zeros(10, 4)}, decoder="itgan",
             decoder_spec={"path": os.path.abspath("secret.txt"), "sha256": "0" * 64, "arch": arch,
                           "num_classes": 10, "per_class": 1},
             meta={"dataset": "digits", "method": "itgan", "ipc": 1}).save("crafted.safetensors")
EOF
$CLI evaluate crafted.safetensors --runs 1 --epochs 1 --model convnet-d2-w16 > /dev/null 2> e.err; rc=$?
row "itgan summary naming $W/secret.txt (outside the roots)" $rc e.err
mkdir -p pdata/planetoid/Cora/raw; cp "$DISTILL_APPS_DATA"/planetoid/Cora/raw/* pdata/planetoid/Cora/raw/
$PY -c "
import os, pickle
class Evil:
    def __reduce__(self): return (os.system, ('touch $W/PWNED',))
open('pdata/planetoid/Cora/raw/ind.cora.x', 'wb').write(pickle.dumps(Evil(), protocol=2))"
$PY -c "
from distill_apps.modalities.graph import load_planetoid
load_planetoid('cora', '$W/pdata', '$W/pcache')" > /dev/null 2> e.err; rc=$?
row "crafted ind.cora.x (os.system): command ran: $( [ -f PWNED ] && echo YES || echo no)" $rc e.err
# --- 9. file modes
echo "file modes (umask $(umask)): summary $(stat -c %a s.safetensors) png $(stat -c %a s.png) ckpt $(stat -c %a c.ckpt) | - |"
