"""Score a project submission on the held-out test set and add it to the project's leaderboard.

    python projects/evaluate.py small-mnist runs/small/best.ckpt --team ada
    python projects/evaluate.py robust-mnist my.ckpt --team ada --dataset digits   # a practice run

The projects, their budgets and how they are scored: projects/README.md and
minicnn/course/projects.py. The official score uses the full MNIST test set
(found through MINICNN_DATA_DIR or --data-dir, or downloaded once); a run on the
embedded digits or on --limit images is recorded as practice. Each team gets one
official entry: choose your model on a validation split, then test once.
"""
import argparse
import os
import sys

from minicnn.course.projects import PROJECTS, ProjectError, append_to_leaderboard, evaluate

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("project", choices=sorted(PROJECTS))
    parser.add_argument("checkpoint", help="a minicnn checkpoint (.ckpt / .safetensors)")
    parser.add_argument("--team", required=True, help="the name on the leaderboard")
    parser.add_argument("--dataset", default="mnist", choices=["mnist", "digits"],
                        help="mnist (official) or the embedded digits' test split (practice, offline)")
    parser.add_argument("--data-dir", default=None, help="folder holding MNIST (default: MINICNN_DATA_DIR)")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N test images (practice)")
    parser.add_argument("--no-download", action="store_true", help="fail instead of downloading MNIST")
    parser.add_argument("--leaderboard", default=None,
                        help="the CSV to append to (default: projects/<project>/leaderboard.csv)")
    parser.add_argument("--note", default="", help="a word about the submission, shown in the CSV")
    args = parser.parse_args(argv)
    board = args.leaderboard or os.path.join(HERE, args.project, "leaderboard.csv")
    try:
        result = evaluate(args.project, args.checkpoint, dataset=args.dataset, data_dir=args.data_dir,
                          limit=args.limit, download=not args.no_download)
        append_to_leaderboard(board, args.team, result, note=args.note)
    except (ProjectError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    kind = "official" if result["official"] else "practice"
    print(f"{args.project} | team {args.team} | score {result['score']:.4f} | accuracy {result['accuracy']:.4f} | "
          f"budget {result['budget_value']} / {result['budget_limit']} | {result['test_images']} "
          f"{result['dataset']} test images ({kind}) -> {board}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
