"""The decisive half of the schedule rule (docs/ablation.md): from grids of one config run at N and
2N epochs, whether doubling the schedule still raised the RGB teacher's and the CMX baseline's
last-checkpoint mIoU by at least the larger seed-sd (and at least 1 point).

    python tools/schedule_rule.py benchmarks/*/results.json

Grids that have no partner at twice their epochs are left out of the table.
"""
import argparse
import json

from engine.ablation.report import doubling_table, schedule_doubling


def read_record(path):
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError) as e:
        raise SystemExit(f"schedule_rule.py: error: '{path}': cannot read a grid's results.json ({e})")
    missing = [key for key in ('config', 'opts', 'variants', 'schedule_rule') if key not in record]
    if missing:
        raise SystemExit(f"schedule_rule.py: error: '{path}': not a grid's results.json (no {', '.join(missing)}); "
                         f"tools/ablate.py writes them")
    return record


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('results', nargs='+', metavar='RESULTS_JSON', help="grids' results.json files")
    args = parser.parse_args()
    rows = schedule_doubling([read_record(path) for path in args.results])
    if not rows:
        raise SystemExit('schedule_rule.py: error: no two of these grids share a config and options with one '
                         'run at twice the epochs of the other')
    print(doubling_table(rows), end='')


if __name__ == '__main__':
    main()
