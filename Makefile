# mega-audio: every target is the command a user would type; variables choose sizes and paths.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# The torch put in first. The default is the CPU wheel these machines carry (fast, small);
# GPU users: make install TORCH="torch" (newest CUDA build) or any pip requirement.
TORCH ?= torch==2.13.0

DATASET ?= folder
DATA_ROOT ?= data/$(DATASET)
CODEC ?= bestrq
BITRATE ?= 1.5
FORMAT ?= wds
NPROC ?= 1
OUT ?= stores/$(DATASET)-$(CODEC)-$(BITRATE)
ARGS ?=

# Training: DATA is the token store, RUN the output dir. Without ACCELERATE_CONFIG, `accelerate launch` runs one
# process; pass ACCELERATE_CONFIG=train/configs/multi_gpu.yaml (etc.) to scale out with the same command.
DATA ?= $(OUT)
PRESET ?= tiny
RUN ?= runs/pretrain-$(notdir $(DATA))
TASK ?= folder
FT_RUN ?= runs/$(TASK)-$(notdir $(DATA))
ACCELERATE_CONFIG ?=
LAUNCH = $(VENV)/bin/accelerate launch $(if $(ACCELERATE_CONFIG),--config_file $(ACCELERATE_CONFIG),\
	--num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no)

# The demo: generated audio, every stage the real command at small sizes.
DEMO ?= demo
DEMO_CLIPS ?= 48
DEMO_STEPS ?= 300
DEMO_EPOCHS ?= 12
DEMO_CODEC ?= $(shell $(PY) -c "from mega_audio.codecs import default_codec; print(default_codec())" 2>/dev/null || echo bestrq)

.PHONY: install test tokenize pretrain finetune demo bench real-audio bench-ssl clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev,av,hf]"
	touch $@

test: install
	$(PY) -m pytest -q

tokenize: install
	$(VENV)/bin/mega-audio tokenize --dataset $(DATASET) --data-root $(DATA_ROOT) --out $(OUT) \
		--codec $(CODEC) --bitrate $(BITRATE) --format $(FORMAT) --nproc $(NPROC) $(ARGS)

pretrain: install
	$(LAUNCH) train/pretrain.py --data $(DATA) --model $(PRESET) --output-dir $(RUN) $(ARGS)

finetune: install
	$(VENV)/bin/mega-audio finetune --task $(TASK) --data $(DATA) --output-dir $(FT_RUN) $(ARGS)

demo: install
	rm -rf $(DEMO)
	$(VENV)/bin/mega-audio synth-data $(DEMO)/audio --per-class $(DEMO_CLIPS) --seconds 4
	@echo "demo: tokenizing with the $(DEMO_CODEC) codec$(if $(filter bestrq,$(DEMO_CODEC)), (no Encodec weights in the Hugging Face cache),)"
	$(MAKE) --no-print-directory tokenize DATASET=folder DATA_ROOT=$(DEMO)/audio OUT=$(DEMO)/store CODEC=$(DEMO_CODEC) \
		BITRATE=1.5 ARGS="--num-workers 1 --shard-size 64"
	$(MAKE) --no-print-directory pretrain DATA=$(DEMO)/store RUN=$(DEMO)/pretrain ARGS="--cpu --max-seconds 4 \
		--batch-size 16 --max-steps $(DEMO_STEPS) --warmup-steps 30 --lr 2e-3 --eval-every 100 --save-every 100 --num-workers 1"
	$(MAKE) --no-print-directory finetune DATA=$(DEMO)/store FT_RUN=$(DEMO)/finetune-scratch \
		ARGS="--cpu --scratch --epochs $(DEMO_EPOCHS) --batch-size 16 --lr 1e-3 --max-seconds 4"
	$(MAKE) --no-print-directory finetune DATA=$(DEMO)/store FT_RUN=$(DEMO)/finetune-pretrained \
		ARGS="--cpu --init $(DEMO)/pretrain/model --epochs $(DEMO_EPOCHS) --batch-size 16 --lr 1e-3 --max-seconds 4"
	$(MAKE) --no-print-directory finetune DATA=$(DEMO)/store FT_RUN=$(DEMO)/finetune-pretrained-aug \
		ARGS="--cpu --init $(DEMO)/pretrain/model --augment chunk-drop --epochs $(DEMO_EPOCHS) --batch-size 16 --lr 1e-3 --max-seconds 4"
	$(VENV)/bin/mega-audio report $(DEMO) --out $(DEMO)/table1.md
	@echo "demo: the pre-trained rows come from $(DEMO_STEPS) steps of a 0.7 M-parameter model on minutes of generated"
	@echo "demo: audio; at that size pre-training is not expected to beat training from scratch (it shows the commands,"
	@echo "demo: not the payoff). What pre-training buys on real audio, and what it does not: README, 'Does pre-training help?'"

bench: install
	$(PY) bench/tokenization.py
	$(PY) bench/loader.py
	$(PY) bench/model.py
	$(PY) bench/model.py --encoders
	$(PY) bench/pretrain.py
	$(PY) bench/faults.py
	$(PY) bench/collect.py

# Real-audio benchmark data from Debian packages (not part of CI; about 1.9 GB out + 0.5 GB package cache, ~4 min on
# 2 cores). Needs: apt-get update && apt-get install -y --no-install-recommends fluidsynth openmpt123
REAL_AUDIO ?= data/real-audio
real-audio: install
	$(PY) bench/real_audio.py --out $(REAL_AUDIO) $(ARGS)

# Does pre-training help? The SSL protocol on the real-audio data (3 seeds; 85-105 min on 2 CPU cores; not CI).
# ARGS="--ablate" runs the recipe ablation instead; ARGS="--gpu": on the GPU, the `small` model, 4x the steps.
bench-ssl: install
	$(PY) bench/ssl_bench.py --data-root $(REAL_AUDIO) $(ARGS)
	$(PY) bench/collect.py

clean:
	rm -rf $(VENV) .pytest_cache demo
