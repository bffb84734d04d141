"""The one table of report.md's and leaderboard.md's phrases, each in English and in Chinese.

Both languages are written by the same code: a function that writes a report sentence takes a
:class:`Phrases` and asks it for a phrase by key, so ``report.zh.md`` cannot say something that
``report.md`` does not, and every number is formatted by the same call in both (docs/design.md §11).
The methods paragraph's sentences are in :mod:`reporting.methods_phrases`, part of this table.
Only the standard library is imported (the leaderboard reads it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from reporting.methods_phrases import METHODS_PHRASES

LANGUAGES = ("en", "zh")
REPORT_LANGS = ("en", "zh", "both")


def report_languages(report_lang: str) -> tuple[str, ...]:
    """--report-lang → the languages written: en, zh, or both."""
    return LANGUAGES if report_lang == "both" else (report_lang,)


@dataclass(frozen=True)
class Phrases:
    """The phrases of one language: ``phrases(key, **fields)`` is the formatted phrase."""

    lang: str = "en"

    def __call__(self, key: str, **fields: object) -> str:
        return PHRASES[key][LANGUAGES.index(self.lang)].format(**fields)

    def join(self, items: Iterable[str]) -> str:
        """A list in running text: ``a, b`` or ``a、b``."""
        return self("list_separator").join(items)


ENGLISH = Phrases("en")

REPORT_PHRASES: dict[str, tuple[str, str]] = {
    "list_separator": (", ", "、"),
    # report.md: the introduction
    "title": ("# Results: {image} + {text}", "# 结果：{image} + {text}"),
    "design_cv": ("{n}-fold cross-validation", "{n} 折交叉验证"),
    "design_holdout": ("one train/validation split", "一次训练/验证划分"),
    "chosen_last": ("each fold's model is its last epoch's", "每折的模型取最后一个 epoch"),
    "chosen_inner": ("the best epoch of each fold is chosen on **{monitor}** of an inner validation split of its "
                     "training images", "每折的最佳 epoch 按其训练图像中划出的内部验证集上的 **{monitor}** 选择"),
    "chosen_fold": ("the best epoch of each fold is chosen on **{monitor}** of its own validation images (optimistic)",
                    "每折的最佳 epoch 按该折自身验证图像上的 **{monitor}** 选择（偏乐观）"),
    "introduction": ("{design}, {n} classes ({names}); {chosen}; wall time {seconds:.0f} s.",
                     "{design}，{n} 个类别（{names}）；{chosen}；总用时 {seconds:.0f} 秒。"),
    # the summary
    "summary_heading": ("## Summary", "## 汇总"),
    "all_numbers_optimistic": ("*All numbers below: {label}.*", "*以下所有数字：{label}。*"),
    "best_epochs": ("Best epochs: {epochs}.", "最佳 epoch：{epochs}。"),
    "fold_epoch": ("fold {fold}: {epoch}", "第 {fold} 折：{epoch}"),
    "test_note": (" The held-out test column is the ensemble of the fold models (mean probabilities) on images no "
                  "fold saw in training or model selection: it is the unbiased estimate.",
                  "留出测试集一列是各折模型的集成（概率取平均）在任何一折的训练和模型选择都没有见过的图像上的结果：这是无偏估计。"),
    "no_test_note": (" Holding out a test set (--test-fraction) adds an estimate, for the ensemble of the fold models, "
                     "on images no fold saw at all.",
                     "留出测试集（--test-fraction）可再给出各折模型集成在任何一折都没有见过的图像上的估计。"),
    "untrained_note": (" **Fold(s) {folds}: the best epoch is 0, the untrained model** — training never improved on "
                       "it, so those numbers are the zero-shot model's.",
                       "**第 {folds} 折：最佳 epoch 是 0，即未训练的模型**——训练始终没有超过它，所以这些数字是零样本模型的。"),
    # selection (summary.py)
    "optimistic_label": ("selected on the scored fold — optimistic", "在评分的同一折上选择——偏乐观"),
    "selection_inner": ("Each fold's epoch (and anything else chosen: early stopping, temperature, threshold) was chosen "
                        "on an inner validation split of its training images (at least {percent}); the validation "
                        "images were only scored, so the fold and {pooled} scores carry no selection bias.",
                        "每折的 epoch（以及其他一切选择：早停、温度、阈值）都在其训练图像中划出的内部验证集（至少 {percent}）"
                        "上选择；验证图像只用于评分，因此各折与{pooled}的分数没有选择偏差。"),
    "selection_last": ("No epoch was chosen: each fold's model is the one after the last epoch, so the validation images "
                       "played no part in choosing it.",
                       "没有选择 epoch：每折的模型是最后一个 epoch 之后的模型，验证图像没有参与选择。"),
    "selection_fold": ("**{label}:** fold scores are measured at the epoch chosen on those same validation images, so "
                       "they, and every number made from them, lean optimistic; --select-on inner (the default) "
                       "chooses on images that are not scored.",
                       "**{label}：**各折分数是在用同一批验证图像选出的 epoch 上测得的，因此这些分数以及由它们得出的所有数字都偏乐观；"
                       "--select-on inner（默认）在不参与评分的图像上选择。"),
    # table headers and columns (summary.py, patients.py)
    "metric": ("metric", "指标"),
    "mean_std": ("mean ± std", "均值 ± 标准差"),
    "fold_column": ("fold {fold}", "第 {fold} 折"),
    "pooled_cv": ("pooled out-of-fold", "汇总折外预测"),
    "pooled_holdout": ("validation", "验证集"),
    "test_column": ("held-out test", "留出测试集"),
    "ci_column": ("95% CI", "95% 置信区间"),
    "with_ci": ("{name} {ci}", "{name} {ci}"),
    "monitored": (" (monitored)", "（监控指标）"),
    "class": ("class", "类别"),
    "precision": ("precision", "精确率"),
    "sensitivity": ("sensitivity (recall)", "敏感度（召回率）"),
    "specificity": ("specificity", "特异度"),
    "f1": ("F1", "F1"),
    "support": ("support", "样本数"),
    "per_patient_column": ("per patient ({n} patients)", "按患者（{n} 名患者）"),
    # statistics notes (summary.py)
    "interval_note": ("95% CIs: {method} bootstrap, {n} resamples of {unit}, seed {seed}",
                      "95% 置信区间：{method} bootstrap，对{unit}重抽样 {n} 次，随机种子 {seed}"),
    "unit_image": ("images", "图像"),
    "unit_group": ("patients", "患者"),
    "percentile_fallback": (" (percentile interval for {metrics}: BCa undefined)",
                            "（{metrics} 用百分位区间：BCa 无定义）"),
    "sentence_end": (".", "。"),
    "operating_point": ("Operating point for '{positive}' ({rule}): probability >= {threshold:.4f}, sensitivity "
                        "{sensitivity}, specificity {specificity}",
                        "“{positive}”的工作点（{rule}）：概率 >= {threshold:.4f}，敏感度 {sensitivity}，特异度 {specificity}"),
    # the rule as the run recorded it (English), or what it says in Chinese
    "op_rule_inner": ("{rule}", "Youden 指数（敏感度 + 特异度 - 1）最大，在汇总的内部验证预测上选择"),
    "op_rule_oof": ("{rule}", "Youden 指数（敏感度 + 特异度 - 1）最大，在汇总的折外预测上选择"),
    "operating_point_test": ("; on the held-out test set at that threshold: sensitivity {sensitivity}, specificity "
                             "{specificity}", "；留出测试集在该阈值下：敏感度 {sensitivity}，特异度 {specificity}"),
    # per class, per patient, pictures
    "per_class_heading": ("## Per class ({pooled})", "## 各类别（{pooled}）"),
    "per_class_test_heading": ("## Per class (held-out test set, fold ensemble)", "## 各类别（留出测试集，各折模型集成）"),
    "per_patient_heading": ("## Per patient (pooled out-of-fold)", "## 按患者（汇总折外预测）"),
    "per_patient_note": ("Folds were grouped by patient ({n} patients): no patient is on both sides of any fold. A "
                         "patient's probabilities are the mean of its images'.",
                         "各折按患者分组（{n} 名患者）：没有任何患者同时出现在一折的两侧。患者的概率是其各图像概率的均值。"),
    "plot_learning_curves": ("Learning curves", "学习曲线"),
    "plot_confusion_matrix": ("Confusion matrix", "混淆矩阵"),
    "plot_roc_curves": ("ROC curves", "ROC 曲线"),
    "plot_reliability_diagram": ("Calibration: reliability diagram", "校准：可靠性图"),
    "plot_test_confusion_matrix": ("Held-out test set confusion matrix", "留出测试集混淆矩阵"),
    # the gallery (gallery.py)
    "gallery_heading": ("## Where the model looks", "## 模型看的是哪里"),
    "gallery_note": ("For each class, its most confident correct and most confident wrong out-of-fold prediction, with "
                     "a heatmap ({method}) of where the fold model that validated the image looked for the class it "
                     "predicted.",
                     "每个类别最有把握的正确与最有把握的错误折外预测，并附热图（{method}）：验证该图像的那一折模型在寻找它所预测的类别时看的是哪里。"),
    "gallery_header": ("| class | most confident correct | most confident wrong |",
                       "| 类别 | 最有把握的正确预测 | 最有把握的错误预测 |"),
    "gallery_correct": ("correct", "正确"),
    "gallery_wrong": ("wrong", "错误"),
    "gallery_cell": ("{path}, fold {fold}: predicted {predicted} (p = {p:.2f})",
                     "{path}，第 {fold} 折：预测为 {predicted}（p = {p:.2f}）"),
    # the methods section's heading
    "methods_heading": ("## Methods", "## 方法"),
}

LEADERBOARD_PHRASES: dict[str, tuple[str, str]] = {
    "lb_intro": ("Leaderboard: mean ± std over folds, best {metric} first.",
                 "排行榜：各折均值 ± 标准差，按 {metric} 从好到差排列。"),
    "lb_none": ("(no finished runs)", "（没有已完成的运行）"),
    "lb_rank": ("rank", "名次"),
    "lb_run": ("run", "运行"),
    "lb_image": ("image encoder", "图像编码器"),
    "lb_text": ("text encoder", "文本编码器"),
    "lb_folds": ("folds", "折数"),
    "lb_wall": ("wall time", "用时"),
    "lb_delta": ("Δ vs #1 (per fold)", "与第 1 名之差（按折）"),
    "lb_p": ("p vs #1 (corrected t)", "与第 1 名的 p 值（校正 t 检验）"),
    "lb_bbc": ("BBC-CV [95% CI]", "BBC-CV [95% 置信区间]"),
    "lb_note": ("note", "备注"),
    "lb_fine_tuning": ("fine-tuning", "微调方法"),
    "lb_plain": ("plain", "常规微调"),
    "lb_not_compared": ("not compared: {reason}", "未比较：{reason}"),
    "lb_of_runs": ("of {n} run", "共 {n} 个运行"),
    "lb_of_runs_plural": ("of {n} runs", "共 {n} 个运行"),
    "lb_explained": ("Δ vs #1: mean over folds of (this run - run #1) in {metric}; p: corrected resampled t-test "
                     "(Nadeau & Bengio 2003) of those differences, only between runs trained on the same folds. "
                     "BBC-CV: bootstrap bias-corrected cross-validation (Tsamardinos, Greasidou & Borboudakis 2018) "
                     "of the best run among those on the same folds: each resample picks the best run on the drawn "
                     "images' out-of-fold predictions and scores it on the images not drawn.",
                     "与第 1 名之差：{metric} 上（本运行 - 第 1 名）的各折均值；p：对这些差值做校正重抽样 t 检验"
                     "（Nadeau & Bengio 2003），只在同一套折上训练的运行之间进行。BBC-CV：对同一套折上最好的运行做 bootstrap "
                     "偏差校正交叉验证（Tsamardinos, Greasidou & Borboudakis 2018）：每次重抽样在抽到的图像的折外预测上挑出最好的运行，"
                     "再在未抽到的图像上为它评分。"),
    "lb_raw": ("{label} {value} over folds", "各折 {label} {value}"),
    "lb_best_of": ("**{run}** is the best of {n} runs on the same folds: {raw} (raw CV: optimistic, the maximum over "
                   "runs scored on the very images that chose it).",
                   "**{run}** 是同一套折上 {n} 个运行中最好的：{raw}（原始交叉验证分数偏乐观：它是在选出它的同一批图像上评分的多个运行中的最大值）。"),
    "lb_only": ("**{run}** is the only run on its folds: {raw}.", "**{run}** 是其所在折上唯一的运行：{raw}。"),
    "lb_bbc_line": ("BBC-CV{corrected}: {estimate}, 95% CI {interval} ({n} bootstrap resamples of the {unit}, seed "
                    "{seed}).", "BBC-CV{corrected}：{estimate}，95% 置信区间 {interval}（对{unit}做 {n} 次 bootstrap 重抽样，随机种子 {seed}）。"),
    "lb_corrected": (" (corrected for the choice)", "（已校正挑选偏差）"),
    "lb_test": ("Held-out test set: {label} {value} ({run}'s test_metrics.json; no run trained on these images and none "
                "was chosen on them). **This is the number to publish.**",
                "留出测试集：{label} {value}（{run} 的 test_metrics.json；没有任何运行在这些图像上训练，也没有在它们上面做任何选择）。"
                "**应当发表的是这个数字。**"),
    "lb_no_test": ("No held-out test set (--test-fraction 0): quote the BBC-CV estimate, not the raw CV.",
                   "没有留出测试集（--test-fraction 0）：请引用 BBC-CV 估计，而不是原始交叉验证分数。"),
    "lb_winner_optimistic": ("Its checkpoints were {label}: BBC-CV corrects the choice among runs, not that.",
                             "它的检查点是{label}：BBC-CV 校正的是运行之间的挑选，不校正这一点。"),
    "lb_left_out": ("Runs left out of BBC-CV:", "未纳入 BBC-CV 的运行："),
    "lb_without": ("Runs without results (failed, interrupted or not run):", "没有结果的运行（失败、中断或未运行）："),
}

PHRASES: dict[str, tuple[str, str]] = {**REPORT_PHRASES, **LEADERBOARD_PHRASES, **METHODS_PHRASES}
