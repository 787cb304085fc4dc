"""Draws docs/figures/delrec_stages.png: DELRec's two stages, what each trains and what it keeps frozen.

Run from anywhere: ``.venv/bin/python docs/figures/make_stages_figure.py``.
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyBboxPatch, Patch  # noqa: E402

OUT = Path(__file__).with_name("delrec_stages.png")
TRAINED, FROZEN, DATA = "#f4a259", "#8ecae6", "#eeeeee"


def box(ax, x, y, w, h, text, color, size=9.5):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                facecolor=color, edgecolor="#333333", linewidth=1))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size, wrap=True)


def arrow(ax, start, end, dashed=False, text=None):
    ax.annotate("", xy=end, xytext=start,
                arrowprops={"arrowstyle": "-|>", "color": "#b5482a" if dashed else "#333333", "lw": 1.3,
                            "linestyle": (0, (4, 3)) if dashed else "-", "shrinkA": 2, "shrinkB": 2})
    if text:
        ax.text(end[0] + 0.3, end[1] - 0.3, text, ha="left", va="center", fontsize=8.5, color="#b5482a",
                style="italic")


def stage(ax, title, boxes, arrows, back):
    ax.set_xlim(-0.1, 12.1)
    ax.set_ylim(0, 3.4)
    ax.axis("off")
    ax.set_title(title, loc="left", fontsize=12, fontweight="bold")
    for b in boxes:
        box(ax, *b)
    for a in arrows:
        arrow(ax, *a)
    arrow(ax, *back, dashed=True, text="gradient: only the trained part changes")


def main() -> None:
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 6.6))
    stage(top, "Stage 1: distil the teacher's pattern into a soft prompt (LLM frozen)",
          [(0.0, 1.6, 2.2, 1.3, "Teacher (SASRec,\nGRU4Rec or Caser),\ntrained on train items", FROZEN),
           (2.9, 1.6, 2.5, 1.3, "Two tasks per user\nTA: pick the hidden latest item\nRPS: pick the teacher's top-1", DATA),
           (6.1, 1.6, 2.6, 1.3, "Prompt: the history, the\nteacher's predictions,\n[soft prompt]", DATA),
           (6.6, 0.05, 1.6, 0.75, "soft prompt\nK vectors", TRAINED),
           (9.4, 1.6, 2.6, 1.3, "LLM (frozen) scores each\ncandidate's title;\ncross-entropy vs the\ntask's answer", FROZEN)],
          [((2.2, 2.25), (2.9, 2.25)), ((5.4, 2.25), (6.1, 2.25)), ((8.7, 2.25), (9.4, 2.25)),
           ((7.4, 0.8), (7.4, 1.6))],
          ((10.7, 1.6), (8.2, 0.45)))
    stage(bottom, "Stage 2: fine-tune the LLM to recommend, the soft prompt frozen",
          [(0.0, 1.6, 2.2, 1.3, "A user's history\n(train items) and\n20 candidates:\nthe next item + 19", DATA),
           (2.9, 1.6, 2.5, 1.3, "Prompt: the history,\n[soft prompt from stage 1]", DATA),
           (3.35, 0.05, 1.6, 0.75, "soft prompt\n(frozen)", FROZEN),
           (6.1, 1.6, 2.6, 1.3, "LLM (frozen) with LoRA\nscores each candidate\n(mean log-prob of its title)", FROZEN),
           (6.6, 0.05, 1.6, 0.75, "LoRA\nadapters", TRAINED),
           (9.4, 1.6, 2.6, 1.3, "Listwise cross-entropy\nvs the next item;\nvalidation picks the step", DATA)],
          [((2.2, 2.25), (2.9, 2.25)), ((5.4, 2.25), (6.1, 2.25)), ((8.7, 2.25), (9.4, 2.25)),
           ((4.15, 0.8), (4.15, 1.6)), ((7.4, 0.8), (7.4, 1.6))],
          ((10.7, 1.6), (8.2, 0.45)))
    fig.legend(handles=[Patch(facecolor=TRAINED, edgecolor="#333333", label="trained in this stage"),
                        Patch(facecolor=FROZEN, edgecolor="#333333", label="frozen (a model)"),
                        Patch(facecolor=DATA, edgecolor="#333333", label="data, prompt, loss")],
               loc="lower center", ncol=3, frameon=False, fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(OUT, dpi=110)
    print(OUT)


if __name__ == "__main__":
    main()
