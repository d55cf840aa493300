"""Bad input to main_exorl.py: exit code 2, one line naming the problem and the accepted values,
nothing written. Also the flag -> hydra override translation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from bfm.cli import train as main_exorl
from bfm.training.config import run_config_from_dict
from bfm.training.run import check


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bfm.collection import make_synthetic_dataset

    root = tmp_path_factory.mktemp("datasets")
    make_synthetic_dataset(root, "walker", "rnd", episodes=2, episode_length=20, seed=0)
    return root


def fail(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main_exorl.cli(argv)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["fb_x", "walker", "rnd"], "unknown algorithm 'fb_x'; accepted: fb, fb_m, hilp, hilp_m"),
        (
            ["fb_m", "walker_wobbly", "rnd"],
            "unknown domain name 'walker_wobbly'; valid names: walker, walker_flickering",
        ),
        (
            ["fb_m", "walker", "rnd", "--eval_tasks", "stand", "dance"],
            "unknown task 'dance' for domain walker; accepted: stand, walk, run, flip",
        ),
        (
            ["fb_m", "walker", "rnd", "--memory_type", "lstm"],
            "unknown memory type 'lstm'; accepted: gru, transformer, s4d, mlp",
        ),
        (
            ["fb_m", "walker", "rnd", "memory=lstm"],
            "Could not find 'memory/lstm'; accepted: gru, mlp, s4d, transformer",
        ),
        (
            ["fb_m", "walker", "rnd", "--history_length", "0"],
            "agent.memory.history_length (--history_length) must be >= 1, got 0",
        ),
        (
            ["fb_m", "walker", "rnd", "--backward_history_length", "-1"],
            "agent.memory.backward_history_length (--backward_history_length) must be >= 1, got -1",
        ),
        (
            ["fb_m", "walker", "rnd", "--eval_rollouts", "0"],
            "train.eval_rollouts (--eval_rollouts) must be >= 1, got 0",
        ),
        (
            [
                "fb_m",
                "walker",
                "proto",
            ],
            "missing dataset",
        ),
        (
            ["fb_m", "walker", "rnd", "--rollout_memory", "stack"],
            "unknown rollout memory mode (train.rollout_memory) 'stack'; accepted: sliding, carry",
        ),
        (
            ["fb_m", "walker", "rnd", "train.bogus=1"],
            "unknown config key train.bogus ('bogus' is not a key of train)",
        ),
        (["fb_m", "walker", "rnd", "agent.bogus=1"], "unknown config key agent.bogus"),
        (["fb", "walker", "rnd", "-m", "memory=gru,s4d"], "would share the run directory"),
        (["fb", "walker", "rnd", "hydra.run.dir=out"], "hydra.run.dir is not used: "),
        (
            ["fb", "walker", "rnd", "--run_dir", "mine", "-m", "seed=1,2"],
            "--run_dir mine names one directory for a sweep of several jobs (jobs 0 and 1 would share it)",
        ),
        (
            ["fb_m", "walker", "rnd", "agent.tau=abc"],
            "agent.tau=abc: Value 'abc' of type 'str' could not be converted to Float",
        ),
        (
            ["fb_m", "walker", "rnd", "agent.lr_f=[1,2]"],
            "agent.lr_f=[1,2]: Value '[1, 2]' of type 'list' could not be converted",
        ),
        (
            ["fb_m", "walker", "rnd", "agent.bf16=maybe"],
            "agent.bf16=maybe: Value 'maybe' is not a valid bool",
        ),
        (["fb_m", "walker", "rnd", "agent.tau=2"], "agent.tau must be in (0, 1], got 2.0"),
        (["fb_m", "walker", "rnd", "agent.gamma=1"], "agent.gamma must be in [0, 1), got 1.0"),
        (["fb_m", "walker", "rnd", "agent.z_dim=0"], "agent.z_dim must be >= 1, got 0"),
        (["fb_m", "walker", "rnd", "agent.lr_b=-1e-4"], "agent.lr_b must be > 0, got -0.0001"),
        (
            ["fb_m", "walker", "rnd", "agent.z_mix_goal=later"],
            "agent.z_mix_goal must be one of next, current, got 'later'",
        ),
        (
            ["fb_m", "walker", "rnd", "--model_dimension", "0"],
            "agent.memory.model_dimension (--model_dimension) must be >= 1, got 0",
        ),
        (
            ["hilp", "walker", "rnd", "agent.gamma_phi=abc"],
            "agent.gamma_phi=abc: Value 'abc' of type 'str' could not be converted to Float",
        ),
        (["hilp", "walker", "rnd", "agent.tau_phi=0"], "agent.tau_phi must be in (0, 1], got 0.0"),
        (
            ["hilp", "walker", "rnd", "agent.sf_loss=matrix"],
            "agent.sf_loss must be one of vector, scalar, got 'matrix'",
        ),
        (
            ["hilp_m", "walker", "rnd", "agent.lr_b=1e-4"],
            "unknown config key agent.lr_b ('lr_b' is not a key of agent)",
        ),
        (
            ["fb_m", "walker", "rnd", "memory.history_length=abc"],
            "agent.memory.history_length=abc: Value 'abc' of type 'str' could not be converted to Integer",
        ),
        (
            ["fb_m", "walker", "rnd", "agent.memory.name_B=lstm"],
            "agent.memory.name_B must be one of gru, transformer, s4d, mlp, got 'lstm'",
        ),
        (
            ["fb_m", "walker", "rnd", "+memory.settings.lstm.token_dim=8"],
            "agent.memory.settings names unknown memory model(s) lstm; accepted: gru, transformer, s4d, mlp",
        ),
        (
            ["hilp_m", "walker", "rnd", "agent.name=hilp_x"],
            "unknown algorithm 'hilp_x'; accepted: fb, fb_m, hilp, hilp_m",
        ),
        (["fb_m", "walker", "rnd", "memory.bogus=1"], "unknown config key agent.memory.bogus"),
        (["fb_m", "walker", "rnd", "--seed", "-1"], "seed (--seed) must be >= 0, got -1"),
        (
            ["fb_m", "walker", "rnd", "--history_length", "1000000000"],
            "history lengths must be <= 1000 (an episode's length), got 1000000000",
        ),
        (["fb_m", "walker", "rnd", "torch_threads=0"], "torch_threads must be >= 1, got 0"),
        (
            ["fb", "walker_flickering", "rnd", "--flickering_prob", "1.5"],
            "env.flickering_prob (--flickering_prob) must be a probability in [0, 1], got 1.5",
        ),
        (
            ["fb", "walker_noise", "rnd", "env.noise_std=-1"],
            "env.noise_std (--noise_std) must be a finite number >= 0",
        ),
        (
            ["fb_m", "walker", "rnd", "--device", "gpu"],
            "unknown device 'gpu'; accepted: auto, cpu, cuda, cuda:N",
        ),
        (
            ["fb_m", "walker", "rnd", "--batch_size", "many"],
            "argument --batch_size: invalid int value: 'many'",
        ),
        (["fb_m", "walker"], "the following arguments are required: dataset (see main_exorl.py --help)"),
        (["fb_m", "walker", "rnd", "--no_such_flag"], "unrecognized arguments: --no_such_flag"),
        (["fb", "walker", "rnd", "-m", "hydra.sweep.dir=out"], "set it with --run_dir DIR"),
        (["fb", "walker", "rnd", "--recurrent_F"], "fb is memory-free; use fb_m for memory in F/pi or B"),
        (["hilp", "walker", "rnd", "--recurrent_B"], "hilp is memory-free; use hilp_m"),
        (
            ["fb_m", "quadruped", "rnd", "--eval_task", "dance"],
            "unknown task 'dance' for domain quadruped; accepted: stand, walk, run, jump, roll, roll_fast, escape",
        ),
    ],
)
def test_bad_input(
    args: list[str], expected: str, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = fail([*args, f"--data_dir={data_dir}", f"run_root={tmp_path}"], capsys)
    assert line.startswith("main_exorl.py: error: ")
    assert expected in line
    assert not any(tmp_path.iterdir()), "bad input must not write anything"


def test_data_dir_that_is_a_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "afile").write_text("mine")
    line = fail(["fb", "walker", "rnd", f"--data_dir={tmp_path / 'afile'}", f"run_root={tmp_path}"], capsys)
    assert (
        f"--data_dir {tmp_path / 'afile'}: {tmp_path / 'afile'} is a file, not a folder; pass the dataset root"
        in line
    )


def test_missing_dataset_names_path_and_remedy(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = fail(["fb_m", "cheetah", "rnd", f"--data_dir={data_dir}", f"run_root={tmp_path}"], capsys)
    assert str(Path(data_dir) / "cheetah" / "rnd" / "buffer" / "dataset.npz") in line
    assert "exorl_reformatter.py cheetah_rnd" in line


def test_incompatible_run_dir(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints" / "step_000000000").mkdir(parents=True)
    (run_dir / "checkpoints" / "latest").write_text("step_000000000")
    monkeypatch.setattr("bfm.training.checkpoint.checkpoint_problem", lambda path: None)  # taken as intact
    main_exorl.register_configs()
    (values,) = main_exorl.compose_jobs(
        [
            "agent=fb_m",
            "env.domain=walker",
            "env.dataset=rnd",
            f"env.data_dir={data_dir}",
            f"run_dir={run_dir}",
        ],
        False,
    )
    saved = run_config_from_dict(values).to_dict()
    saved["agent"]["memory"]["name"] = "transformer"
    (run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    line = fail(["fb_m", "walker", "rnd", f"--data_dir={data_dir}", f"--run_dir={run_dir}"], capsys)
    assert f"run directory {run_dir} holds a run with a different config" in line
    assert "agent.memory.name ('transformer' -> 'gru')" in line


def test_translate_paper_flags() -> None:
    overrides, multirun = main_exorl.translate(
        [
            "fb_m",
            "walker_flickering",
            "rnd",
            "--memory_type=transformer",
            "--eval_task",
            "stand",
            "run",
            "--no-recurrent_B",
            "--train_multipliers",
            "1.0",
            "2.0",
            "--noise_std=0.1",
            "--wandb",
            "agent.lr_f=3e-4",
            "-m",
            "seed=1,2",
        ]
    )
    assert multirun
    assert overrides[:3] == ["agent=fb_m", "env.domain=walker_flickering", "env.dataset=rnd"]
    for expected in (
        "memory=transformer",
        "env.eval_tasks=[stand,run]",
        "agent.recurrent_B=false",
        "env.train_multipliers=[1.0,2.0]",
        "env.noise_std=0.1",
        "logger=wandb",
        "agent.lr_f=3e-4",
        "seed=1,2",
    ):
        assert expected in overrides


def test_memory_type_flag_sweeps_with_multirun() -> None:
    overrides, multirun = main_exorl.translate(["fb_m", "walker", "rnd", "--memory_type=gru,s4d", "-m"])
    assert multirun and "memory=gru,s4d" in overrides
    main_exorl.register_configs()
    jobs = main_exorl.compose_jobs(overrides, multirun)
    assert [job["agent"]["memory"]["name"] for job in jobs] == ["gru", "s4d"]


def test_defaults_are_the_paper_settings(data_dir: Path) -> None:
    main_exorl.register_configs()
    (values,) = main_exorl.compose_jobs(
        ["agent=fb_m", "env.domain=walker_flickering", "env.dataset=rnd"], False
    )
    cfg = check(run_config_from_dict({**values, "env": {**values["env"], "data_dir": str(data_dir)}}))
    memory = cfg.agent.memory
    assert (memory.name, memory.history_length, memory.backward_history_length) == ("gru", 32, 8)
    assert memory.model_dimension == 512  # configs/memory/gru.yaml: the GRU's own default
    assert cfg.agent.recurrent_F and cfg.agent.recurrent_B
    assert (cfg.train.learning_steps, cfg.train.batch_size, cfg.train.eval_frequency) == (
        1_000_000,
        512,
        20_000,
    )
    assert (cfg.train.eval_rollouts, cfg.train.z_inference_steps, cfg.env.episodes) == (10, 10_000, 5000)
    assert (cfg.env.flickering_prob, cfg.env.noise_std, cfg.env.missing_sensor_prob) == (0.2, 0.2, 0.2)
    assert cfg.seed == 42 and cfg.train.rollout_memory == "sliding" and not cfg.logger.wandb
    assert cfg.run_dir == "runs/fb_m/walker_flickering/rnd/gru/seed42"
    (transformer,) = main_exorl.compose_jobs(["agent=fb_m", "memory=transformer"], False)
    assert transformer["agent"]["memory"]["model_dimension"] == 32
    (smoke,) = main_exorl.compose_jobs(["agent=fb_m", "experiment=smoke"], False)
    assert (
        smoke["torch_threads"] == 1 and smoke["train"]["learning_steps"] == 6
    )  # presets override top-level keys
    (fb,) = main_exorl.compose_jobs(["agent=fb"], False)
    assert fb["run_dir"].endswith("/none/seed42") and not fb["agent"]["recurrent_F"]


def test_launcher_configs_compose() -> None:
    from hydra import compose, initialize_config_dir

    main_exorl.register_configs()
    with initialize_config_dir(config_dir=str(main_exorl.CONFIG_DIR), version_base="1.3"):
        slurm = compose(
            config_name="config", overrides=["hydra/launcher=submitit_slurm_bfm"], return_hydra_config=True
        )
        joblib = compose(config_name="config", overrides=["hydra/launcher=joblib"], return_hydra_config=True)
    assert slurm.hydra.launcher.gpus_per_node == 1 and "SlurmLauncher" in slurm.hydra.launcher._target_
    assert "JoblibLauncher" in joblib.hydra.launcher._target_


def test_every_paper_command_is_valid() -> None:
    import shlex
    import subprocess

    from bfm.training import builders, config

    script = Path(__file__).resolve().parents[1] / "experiments" / "paper_commands.sh"
    lines = subprocess.run(
        ["bash", str(script), "--dry-run"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    commands = [shlex.split(line)[2:] for line in lines if " main_exorl.py " in line]
    assert len(commands) >= 50
    main_exorl.register_configs()
    for argv in commands:
        overrides, multirun = main_exorl.translate(argv)
        assert multirun and overrides[-1].startswith("seed=")
        (values,) = main_exorl.compose_jobs(overrides[:-1], False)
        cfg = config.run_config_from_dict(values)
        config.validate_names(cfg)
        builders.make_env(cfg)


@pytest.mark.parametrize(
    ("overrides", "gamma_phi", "sf_loss"),
    [
        (["agent=hilp_m", "env.domain=walker_flickering"], 0.96, "vector"),
        (["agent=hilp", "env.domain=quadruped_noise"], 0.98, "scalar"),
        (["agent=hilp_m", "env.domain=cheetah"], 0.98, "vector"),
        (["agent=hilp_m", "env.domain=walker", "agent.gamma_phi=0.9", "agent.sf_loss=scalar"], 0.9, "scalar"),
    ],
)
def test_hilp_domain_defaults_unless_set(overrides: list[str], gamma_phi: float, sf_loss: str) -> None:
    from bfm.training import config

    main_exorl.register_configs()
    (values,) = main_exorl.compose_jobs(overrides, False)
    agent_config = config.run_config_from_dict(values).agent
    assert (agent_config.gamma_phi, agent_config.sf_loss) == (gamma_phi, sf_loss)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda_is_refused(data_dir: Path, tmp_path: Path, capsys) -> None:
    line = fail(
        ["fb_m", "walker", "rnd", "--device", "cuda", f"--data_dir={data_dir}", f"run_root={tmp_path}"],
        capsys,
    )
    assert "device 'cuda': this machine has no CUDA device; use --device cpu (or auto)" in line


def test_resume_false_refuses_a_checkpointed_run_dir(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints" / "step_000000003").mkdir(parents=True)
    (run_dir / "checkpoints" / "latest").write_text("step_000000003")
    argv = ["fb_m", "walker", "rnd", f"--data_dir={data_dir}", f"--run_dir={run_dir}", "resume=false"]
    line = fail(argv, capsys)
    assert "already holds a checkpoint (step_000000003); pass resume=true" in line


def test_missing_changed_dynamics_dataset_says_to_collect(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Changed-dynamics data is not public: the remedy is a local collection at that multiplier."""
    args = [
        "fb_m",
        "walker",
        "rnd",
        "--train_multipliers",
        "1.5",
        f"--data_dir={data_dir}",
        f"run_root={tmp_path}",
    ]
    line = fail(args, capsys)
    assert "exorl_reformatter.py walker_rnd" in line and "--collect" in line and "--multiplier 1.5" in line


@pytest.mark.parametrize("agent", ["fb", "fb_m", "hilp", "hilp_m"])
def test_cpu_preset_builds_every_algorithm(agent: str) -> None:
    """experiment=cpu only sets fields every algorithm has (B follows lr_f; HILP keeps lr_phi)."""
    from bfm.training.config import run_config_from_dict

    main_exorl.register_configs()
    (values,) = main_exorl.compose_jobs([f"agent={agent}", "experiment=cpu"], False)
    cfg = run_config_from_dict(values)
    config = cfg.agent
    assert (config.lr_f, config.lr_actor, cfg.train.batch_size) == (5e-4, 5e-4, 256)
    assert (cfg.env.data_dir, cfg.train.learning_steps, cfg.torch_threads) == ("datasets/cpu", 30_000, 1)
    assert config.memory.settings["gru"] == {"token_dim": 64}  # the per-token MLP as wide as the GRU
    if agent.startswith("fb"):
        assert config.lr_b is None  # the FB optimizer uses lr_f for B


def test_sweep_expansion_is_the_cartesian_product_in_launch_order() -> None:
    jobs = main_exorl.expand_sweep(["agent=fb_m,hilp_m", "env.domain=walker", "seed=range(2)", "+x=[a,b]"])
    assert jobs == [
        ["agent=fb_m", "env.domain=walker", "seed=0", "+x=[a,b]"],
        ["agent=fb_m", "env.domain=walker", "seed=1", "+x=[a,b]"],
        ["agent=hilp_m", "env.domain=walker", "seed=0", "+x=[a,b]"],
        ["agent=hilp_m", "env.domain=walker", "seed=1", "+x=[a,b]"],
    ]


def test_flag_help_is_the_config_field_documentation_and_default() -> None:
    from bfm.training.config import EnvSettings, TrainSettings, field_docs

    actions = {a.dest: a.help for a in main_exorl.build_parser()._actions}
    assert (
        actions["batch_size"]
        == f"{field_docs(TrainSettings)['batch_size']} (default {TrainSettings.batch_size})"
    )
    assert actions["episodes"].endswith(f"(default {EnvSettings.episodes})")
    assert (
        actions["data_dir"]
        == f"root of <domain>/<dataset>/buffer/dataset.npz (default {EnvSettings.data_dir})"
    )


def test_run_dir_saved_before_a_field_was_added_still_resumes(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A config.yaml that lacks a field added to the config classes since (here env.verify_checksums
    and env.pad_with_zeros) reads with those fields at their defaults: the run resumes; a changed
    value is still refused."""
    from bfm.training import run_dir as rd
    from bfm.training.config import ConfigError

    main_exorl.register_configs()
    overrides = [
        "agent=fb_m",
        "memory=s4d",
        "experiment=cpu",
        f"env.data_dir={data_dir}",
        f"run_dir={tmp_path}",
    ]
    (values,) = main_exorl.compose_jobs(overrides, False)
    cfg = run_config_from_dict(values)
    saved = cfg.to_dict()
    del saved["env"]["verify_checksums"], saved["env"]["pad_with_zeros"]
    (tmp_path / "checkpoints" / "step_000000003").mkdir(parents=True)
    (tmp_path / "checkpoints" / "latest").write_text("step_000000003")
    monkeypatch.setattr("bfm.training.checkpoint.checkpoint_problem", lambda path: None)  # taken as intact
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    assert rd.check_run_dir(cfg) == tmp_path / "checkpoints" / "step_000000003"
    saved["agent"]["memory"]["history_length"] = 4
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(ConfigError, match=r"agent.memory.history_length \(4 -> 8\)"):
        rd.check_run_dir(cfg)


def test_run_dir_that_cannot_be_created_is_refused(data_dir: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "a_file").write_text("x")
    run_dir = tmp_path / "a_file" / "run"
    line = fail(["fb", "walker", "rnd", f"--data_dir={data_dir}", f"--run_dir={run_dir}"], capsys)
    assert (
        f"run directory {run_dir}: {tmp_path / 'a_file'} is a file, not a folder; choose another --run_dir"
        in line
    )


def test_a_folder_that_is_not_writable_is_named(data_dir: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """The trainer's and the reformatter's folder checks share ``files.unwritable`` (root passes
    any permission check, so the refusal is simulated)."""
    from bfm import files

    locked_dir = tmp_path / "locked"
    locked_dir.mkdir()
    assert files.unwritable(locked_dir / "a" / "b") is None
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != locked_dir and real_access(path, mode))
    assert files.unwritable(locked_dir / "a" / "b") == f"{locked_dir} is not writable"
    line = fail(["fb", "walker", "rnd", f"--data_dir={data_dir}", f"--run_dir={locked_dir / 'run'}"], capsys)
    assert (
        f"run directory {locked_dir / 'run'}: {locked_dir} is not writable; choose another --run_dir" in line
    )


def test_out_of_memory_in_an_update_names_the_settings(data_dir: Path, tmp_path: Path) -> None:
    """The CPU allocator's RuntimeError (a real one: an allocation no machine has, raised in the
    first update) exits 2 with one line naming what to reduce."""
    from tests.test_cli import run_patched_cli

    argv = [
        "fb",
        "walker",
        "rnd",
        "experiment=smoke",
        f"--data_dir={data_dir}",
        f"--run_dir={tmp_path / 'run'}",
    ]
    setup = (
        "import torch; from bfm.agents.base import AgentBase\n"
        "AgentBase.update = lambda self, batch, step=0: torch.empty(2**60, dtype=torch.uint8)"
    )
    code, line = run_patched_cli(setup, argv)
    assert code == 2, line
    assert line.startswith("main_exorl.py: error: out of memory (") and "can't allocate memory" in line
    assert line.endswith(
        "reduce train.batch_size, agent.memory.history_length, the widths or env.episodes, or use another --device"
    )


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "agent.foo=1",
            "unknown config key agent.foo ('foo' is not a key of agent); accepted keys of agent: ",
        ),
        (
            "foo=1",
            "unknown config key foo ('foo' is not a key of the config); accepted top-level keys: agent, ",
        ),
        ("train.batchsize=3", "accepted keys of train: batch_size, "),  # the nearest match first
        (
            "memory.settings.lstm.token_dim=8",
            "accepted keys of agent.memory.settings: gru, mlp, s4d, transformer",
        ),
        ("agent.memory.foo=2", "accepted keys of agent.memory: backward_history_length, history_length, "),
    ],
)
def test_unknown_keys_list_what_is_accepted(
    override: str, expected: str, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = fail(["fb_m", "walker", "rnd", override, f"--data_dir={data_dir}", f"run_root={tmp_path}"], capsys)
    assert expected in line, line


def test_memory_settings_of_a_memory_free_agent_are_refused(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = fail(
        ["fb", "walker", "rnd", "--history_length", "8", f"--data_dir={data_dir}", f"run_root={tmp_path}"],
        capsys,
    )
    assert line == (
        "main_exorl.py: error: --history_length has no effect for fb: it has no memory (F, B and the policy see "
        "one step); use fb_m for a memory model, or drop the setting"
    )
