# Fresh machine: `make demo` runs the embedded demo, `make test` the test suite. Both install what they need
# into .venv on first use (torch first — the 2.13.0 build, which is the CPU one where no CUDA torch exists —
# then dreamcore itself) and skip the install on later runs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.dreamcore-installed
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo studio test test-browser test-slow test-all bench tiny-prior tiny-mv-prior tiny-mv-image-prior bench-text bench-image bench-edit bench-speed bench-step gpu-wheels gpu-check gpu-check-dry clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	@$(BIN)/python -m pip install -q -e ".[test,diffusers,ray,studio]"
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/dreamcore demo

studio: $(STAMP)
	$(BIN)/dreamcore studio

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not browser"

# the studio in a real browser (Debian's chromium; ~2 min)
test-browser: $(STAMP)
	$(BIN)/python -m pytest -q -m browser

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m "slow and not browser"

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

# retrain the shipped learned prior (assets/tiny-prior) from the shipped objects: one seeded command, ~45 min on 2 cores
TINY_PRIOR_OBJECTS := --object assets/robot.glb:"a toy robot" --object assets/car.glb:"a toy car" \
	--object assets/penguin.glb:"a penguin" --object assets/mushroom_house.glb:"a mushroom house"
tiny-prior: $(STAMP)
	$(BIN)/python tools/train_tiny_prior.py $(TINY_PRIOR_OBJECTS) --out assets/tiny-prior --seed 0 --threads 2 --steps 2000

# retrain the shipped multi-view prior (assets/tiny-mv-prior: 4 views of an object at once, camera-conditioned) from
# the same objects, scored against assets/tiny-prior: two seeded commands (2000 steps, then 1600 more on fresh
# renders of seed 1 with --init-from), ~85 min on 2 cores
MV_PRIOR := $(TINY_PRIOR_OBJECTS) --views 4 --prediction-type v_prediction --threads 2 --batch 32
tiny-mv-prior: $(STAMP)
	$(BIN)/python tools/train_tiny_prior.py $(MV_PRIOR) --seed 0 --steps 2000 --out runs/tiny-mv-prior-stage1
	$(BIN)/python tools/train_tiny_prior.py $(MV_PRIOR) --seed 1 --steps 1600 \
		--init-from runs/tiny-mv-prior-stage1 --out assets/tiny-mv-prior

# train the image-conditioned multi-view prior (assets/tiny-mv-image-prior: the same model plus ImageDream's reference
# frame, a clean picture last in each group with its own camera, dropped for half the groups): one folder for
# text-to-3D (image dropped) and image-to-3D (prior.name=multiview prior.model=assets/tiny-mv-image-prior). The
# reference frame adds no parameters, so it continues the shipped text-only assets/tiny-mv-prior (--init-from): one
# seeded command, 800 steps (a step costs ~1.33x a text-only one: 5 frames per group) + the evaluation with and
# without the picture, ~45 min on 2 cores
MV_IMAGE_PRIOR := $(MV_PRIOR) --image-conditioning --image-dropout 0.5
tiny-mv-image-prior: $(STAMP)
	$(BIN)/python tools/train_tiny_prior.py $(MV_IMAGE_PRIOR) --seed 2 --steps 800 --no-baseline \
		--init-from assets/tiny-mv-prior --out assets/tiny-mv-image-prior

# the text-only benchmark (bench/text_to_3d.md and .png, and its tables in docs/benchmarks.md): every recipe x
# guidance x prior x object x 3 seeds, hours
bench-text: $(STAMP)
	$(BIN)/python tools/bench_text_to_3d.py --docs docs/benchmarks.md

# the image-to-3D benchmark (bench/image_to_3d.md, .json and .png, rows in bench/image_to_3d/rows, its tables in
# docs/benchmarks.md): objects x views x {multiview, 2d} x 3 seeds, hours
bench-image: $(STAMP)
	$(BIN)/python tools/bench_image_to_3d.py --docs docs/benchmarks.md

# the editing benchmark (bench/edit.md, .json and .png, rows in bench/edit/rows, its table in docs/benchmarks.md): the
# robot's reconstruction (NeRF, Gaussians) edited toward a blue chest with dds, pds and sds, with and without the box
# as region, on the closed-form reference prior: 2 source runs + 12 edits, an estimated 30-45 min on 2 cores
bench-edit: $(STAMP)
	$(BIN)/python tools/bench_edit.py --docs docs/benchmarks.md

# the speed benchmark (bench/speed.md, .json and .png, rows in bench/speed/rows): SIR against SDS in prior
# evaluations and wall clock on the reference prior and the 2D tiny prior, NeRF and Gaussians (its tables in
# docs/benchmarks.md); ~1.5 h on 2 cores, rows already present are kept
bench-speed: $(STAMP)
	$(BIN)/python tools/bench_speed.py --settings reference-nerf,reference-gaussians,learned-nerf,learned-gaussians \
		--docs docs/benchmarks.md

# the step-time benchmark (bench/step.md and .json, its table in docs/benchmarks.md): seconds per step of the demo's
# and the reference Gaussians' default step, this tree against the commit before the step work (a git worktree),
# measured alternately; ~10 min on 2 cores
bench-step: $(STAMP)
	$(BIN)/python tools/bench_step.py --settings reference-nerf,reference-gaussians --against 3e1eb48 --rounds 2 \
		--docs docs/benchmarks.md

# the GPU check (tools/gpu_check.py). Here, with the network: fetch the wheels the bare GPU machine lacks (~19 MiB)
gpu-wheels:
	tools/gpu_wheels.sh
# there (its own python3 with torch; nothing installed, nothing downloads): install the bundle, run, report
GPU_REPORT_DIR ?= .
gpu-check:
	$(PYTHON) tools/gpu_check.py --wheels .gpu-wheels --out $(GPU_REPORT_DIR)
# the same script on this CPU at tiny sizes (also in the test suite)
gpu-check-dry: $(STAMP)
	$(BIN)/python tools/gpu_check.py --dry-run --out $(GPU_REPORT_DIR)

clean:
	rm -rf runs .pytest_cache
