import os

import numpy as np
import pytest
import torch

# The suite runs on small shared CPUs: one intra-op thread avoids oversubscription (the tiny
# models used here gain nothing from more).
torch.set_num_threads(1)

# A run that leaves its precision open computes in bf16 on a CPU with native bfloat16 (AVX512_BF16, AMX)
# and in float32 elsewhere: the suite pins float32, so its pixels (the golden digests, the comparisons of
# two runs) are the same on every CI machine; tests/test_precision_default.py unsets it to test the rule.
# The CLI processes the tests start inherit it.
os.environ["DIFFINFINITE_PRECISION"] = "float32"

# runs record their speed for the next estimate (src_models/synthesis/estimate.py): never in the
# user's cache, and the same file for the CLI processes the tests start
os.environ.setdefault("DIFFINFINITE_TIMINGS", os.path.join(__import__("tempfile").mkdtemp(prefix="di-timings-"),
                                                           "timings.json"))


# ``make test-fast`` runs ``-m "not slow and not gui"``.  The GUI tests (tests/gui) are marked
# ``gui`` here; ``slow`` marks what starts processes or clusters (the CLI killed and resumed, dask
# workers, torchrun), runs the shipped model for long (seams, evaluation sets) or builds a wheel:
# listed here, by node id prefix, so the fast set is decided in one place.
SLOW = (
    "tests/test_seams.py",
    "tests/test_cli_progress.py::test_make_mask_shows_a_progress_bar_of_the_layout_levels",
    "tests/test_distributed_train.py",
    "tests/test_evaluate.py::test_real_against_another_part_of_itself_reads_as_alike",
    "tests/test_evaluate.py::test_real_against_a_blurred_copy_reads_as_different",
    "tests/test_evaluate.py::test_cli_prints_one_json_object_and_writes_the_report",
    "tests/test_evaluate.py::test_c2st_is_deterministic_for_a_seed_and_balanced",
    "tests/test_many.py::test_two_workers_make_the_canvases_of_sequential_generate_runs",
    "tests/test_many.py::test_a_worker_killed_mid_canvas_loses_no_finished_region",
    "tests/test_cli.py::test_two_fresh_runs_on_one_path_one_wins_the_other_says_why",
    "tests/test_cli.py::test_sweep_killed_mid_level_resumes_to_the_same_canvas",
    "tests/test_cli.py::test_resume_after_sigkill_equals_an_uninterrupted_run",
    "tests/test_cli.py::test_sigterm_is_handled_like_ctrl_c",
    "tests/test_cli.py::test_overwrite_of_a_canvas_being_written_is_refused_and_destroys_nothing",
    "tests/test_cli.py::test_every_plan_and_solver_runs_and_the_old_schedule_option_still_works",
    "tests/test_sd_vae.py::test_256_latent_decodes_without_seams",
    "tests/test_packaging.py::test_manifest_is_inside_the_built_wheel",
    "tests/test_sweep.py::test_sweep_killed_mid_level_resumes_to_the_same_canvas",
    "tests/test_sweep.py::test_sweep_cancelled_between_tiles_and_during_decoding_resumes",
    "tests/test_sweep.py::test_disk_full_during_a_sweep_is_one_clear_error_and_resumable",
    "tests/test_sweep.py::test_sweep_inpaints_a_rectangle_with_the_rest_as_context",
    "tests/test_sweep.py::test_an_unfinished_sweep_of_other_settings_is_refused_then_discarded",
    "tests/test_many.py::test_each_worker_loads_the_model_once_for_all_its_canvases",
    "tests/test_synthesis.py::test_import_real_slide",
    "tests/test_synthesis.py::test_cancel_then_resume_equals_an_uninterrupted_run",
    "tests/test_release_unet.py::test_no_gui_imports",
    "tests/test_evaluate.py::test_classes_select_tiles_by_mask",
    "tests/test_dataset.py::test_interrupted_run_resumes_to_the_same_folder",
    "tests/test_integrity.py::test_region_state_is_one_array_with_checksums_not_one_file_per_region",
    "tests/test_masks_from_nuclei.py::test_the_command_on_the_real_images",
    "tests/test_masks_from_nuclei.py::test_no_heldout_row_reaches_the_training_folder",
    "tests/test_sweep.py::test_sweep_fills_every_region_running_each_window_of_a_level_once[release]",
    "tests/test_many.py::test_generate_many_finishes_a_canvas_that_generate_started",
    "tests/test_fast_path.py::test_memory_budget",
    "tests/test_fast_path.py::test_a_level_never_waits_for_the_device",
    "tests/test_dataset.py::test_several_slides_in_one_run",
    "tests/test_segmentation.py",
    "tests/test_masks_from_nuclei.py::test_the_trainer_reads_the_folders",
    "tests/test_evaluate.py::test_real_tiles_from_the_models_training_rows_are_named",
    "tests/test_evaluate.py::test_c2st_that_learns_nothing_says_so",
    "tests/test_densenet.py::test_evaluate_takes_pathmnist_features",
    "tests/test_densenet.py::test_every_container_gives_the_same_weights_in_torch_layout",
)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid.startswith("tests/gui/"):
            item.add_marker(pytest.mark.gui)
        if item.nodeid.startswith(SLOW):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def tiny():
    from src_models.models.loading import load_model

    return load_model("tiny-test", "cpu")


@pytest.fixture
def two_class_mask():
    """64x64 labels: class 1 on the left, 2 on the right, 3 in a bottom band."""
    m = np.zeros((64, 64), np.uint8)
    m[:, :32] = 1
    m[:, 32:] = 2
    m[48:, :] = 3
    return m


@pytest.fixture
def mask_png(tmp_path, two_class_mask):
    """``two_class_mask`` as a label PNG in the test's folder."""
    from skimage import io

    p = tmp_path / "m.png"
    io.imsave(p, two_class_mask, check_contrast=False)
    return p


# CI (.ci/run sets DIFFINFINITE_REQUIRE_CONFORMANCE=1) fails when any conformance test is skipped:
# the reference vectors ship in tests/data, so a skip means something is broken, not missing.
_SKIPPED_CONFORMANCE: list[str] = []


def pytest_runtest_logreport(report):
    if report.skipped and "conformance" in report.keywords:
        _SKIPPED_CONFORMANCE.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    if _SKIPPED_CONFORMANCE and os.environ.get("DIFFINFINITE_REQUIRE_CONFORMANCE") == "1":
        print(f"\nCI: {len(_SKIPPED_CONFORMANCE)} conformance test(s) skipped: " + ", ".join(_SKIPPED_CONFORMANCE))
        session.exitstatus = 1
