"""tools/benchmark_infer.py at a tiny size: one row per variant with consistent figures, onnxruntime
and bf16 predicting (nearly) what fp32 predicts, the JSON file, and an existing file kept. No
assertion is about speed."""
import json

import pytest

from tools import benchmark_infer
from helpers import DEMO_CONFIG

TINY = ['-c', DEMO_CONFIG, '--backbones', 'mit_b0', '--size', '64', '96', '--repeats', '2', '--warmup', '1',
        '--device', 'cpu', '--opts', 'decoder_embed_dim=16']


# An ONNX export (as tests/test_export.py checks it) plus timed repeats: out of CI's time budget.
@pytest.mark.slow
def test_report(tmp_path):
    out = tmp_path / 'infer.json'
    report = benchmark_infer.main(TINY + ['--json', str(out)])
    with open(out) as f:
        assert json.load(f) == json.loads(json.dumps(report))
    rows = {row['variant']: row for row in report['results']}
    assert list(rows) == list(benchmark_infer.VARIANTS)
    for row in rows.values():
        assert row['backbone'] == 'mit_b0' and row['device'] == 'cpu' and 'error' not in row
        assert len(row['ms']) == 2 and row['ms_min'] <= row['ms_median'] <= row['ms_max']
        assert row['images_per_s'] == pytest.approx(1e3 / row['ms_median'])
    assert rows['torch fp32']['agreement_vs_fp32'] == 1.0
    assert rows['onnxruntime']['agreement_vs_fp32'] >= 0.999
    assert rows['torch bf16']['agreement_vs_fp32'] >= 0.9
    assert report['size'] == [64, 96] and report['versions']['onnxruntime']


def test_existing_json_is_kept(tmp_path, capsys):
    out = tmp_path / 'infer.json'
    out.write_text('{}')
    with pytest.raises(SystemExit) as exit_info:
        benchmark_infer.main(TINY + ['--json', str(out)])
    assert exit_info.value.code == 2 and '--overwrite' in capsys.readouterr().err
    assert out.read_text() == '{}'
