"""The methods paragraph's sentences in English and Chinese: the part of :data:`reporting.phrases.PHRASES`
that :mod:`reporting.methods` writes from (kept apart only for the length of one file)."""
from __future__ import annotations

METHODS_PHRASES: dict[str, tuple[str, str]] = {
    "m_data": ("The data set holds {n} images in {c} classes: {listed}.",
               "数据集共有 {n} 张图像、{c} 个类别：{listed}。"),
    "m_class_count": ("{name} ({n})", "{name}（{n}）"),
    "m_test": ("A stratified {percent} of the images ({n}) was held out as a test set before any fold was made "
               "(seed {seed}); no fold trained on it or chose an epoch with it.",
               "在划分各折之前，按分层抽样留出 {percent} 的图像（{n} 张）作为测试集（随机种子 {seed}）；没有任何一折在其上训练或用它选择 epoch。"),
    "m_subject_rest": ("The remaining {n} images", "其余 {n} 张图像"),
    "m_subject_all": ("The images", "全部图像"),
    "m_cv": ("{subject} were split by stratified {k}-fold cross-validation (scikit-learn StratifiedKFold, shuffled "
             "with seed {seed}), so that each was validated exactly once.",
             "{subject}按分层 {k} 折交叉验证划分（scikit-learn StratifiedKFold，以随机种子 {seed} 打乱），每张图像恰好被验证一次。"),
    "m_holdout": ("{subject} were split once, stratified, into training and validation ({percent} for validation, "
                  "seed {seed}).", "{subject}按分层抽样一次性划分为训练集和验证集（验证集 {percent}，随机种子 {seed}）。"),
    # the encoders (how each began: models/families.py's words in both languages)
    "m_image_encoder": ("the image encoder {base} ({start}{frozen})", "图像编码器 {base}（{start}{frozen}）"),
    "m_text_encoder": ("the text encoder {base} ({start}{frozen})", "文本编码器 {base}（{start}{frozen}）"),
    "m_image_frozen": (", kept frozen (only its projection was trained)", "，保持冻结（只训练其投影层）"),
    "m_text_frozen": (", kept frozen", "，保持冻结"),
    "m_loss_symmetric": ("the image-to-class cross-entropy plus the class-to-image contrastive term",
                         "图像到类别的交叉熵加上类别到图像的对比项"),
    "m_loss_ce": ("the image-to-class cross-entropy", "图像到类别的交叉熵"),
    "m_model": ("The classifier is a CLIP-style dual encoder: {image} and {text}, each followed by a linear projection "
                "to a shared {dim}-dimensional embedding. Each class is represented by the normalised mean embedding "
                "of its text descriptions, and an image is scored by its cosine similarity to each class, multiplied "
                "by a learnable scale initialised at 1/{temperature}; the loss was {loss}.",
                "分类器是 CLIP 式双编码器：{image}和{text}，各接一个线性投影，映射到共享的 {dim} 维嵌入空间。每个类别由其文本描述"
                "嵌入的归一化均值表示；图像的得分是它与每个类别的余弦相似度，乘以一个可学习的缩放系数（初始值 1/{temperature}）；"
                "损失函数为{loss}。"),
    # training
    "m_aug_none": ("no augmentation", "无数据增强"),
    "m_aug_minimal": ("small random affine jitter (rotation ±5°, shift ±5%, scale 0.95-1.05)",
                      "小幅随机仿射抖动（旋转 ±5°、平移 ±5%、缩放 0.95-1.05）"),
    "m_aug_standard": ("random resized crops (75-100% of the area, aspect ratio 0.9-1.1), horizontal flips, rotation "
                       "±10° and brightness and contrast jitter of ±20%",
                       "随机裁剪缩放（面积的 75-100%，宽高比 0.9-1.1）、水平翻转、±10° 旋转以及 ±20% 的亮度和对比度抖动"),
    "m_images": ("Images were padded to a square with black, resized to {size}×{size} pixels and normalised with the "
                 "ImageNet mean and standard deviation; training used {augmentation}.",
                 "图像用黑色填充为正方形，缩放到 {size}×{size} 像素，并按 ImageNet 的均值和标准差归一化；训练时使用{augmentation}。"),
    "m_weighted": ("Training images were drawn with replacement with class-balancing weights {formula} "
                   "({method}{exponent}), n_c being a class's training images.",
                   "训练图像按类别平衡权重 {formula}（{method}{exponent}）有放回地抽取，n_c 为一个类别的训练图像数。"),
    "m_exponent": (", raised to the power {s}", "，再取 {s} 次幂"),
    "m_uniform": ("Training images were drawn uniformly in a shuffled order (no class re-weighting).",
                  "训练图像按打乱的顺序均匀抽取（无类别加权）。"),
    "m_tower_image": ("image backbone ×{m}", "图像主干 ×{m}"),
    "m_tower_text": ("text encoder ×{m}", "文本编码器 ×{m}"),
    "m_and": (" and ", "和"),
    "m_multiplied": (", multiplied for the {towers}", "，并对{towers}乘以倍率"),
    "m_patience": (", stopping a fold early after {p} epochs without improvement",
                   "，连续 {p} 个 epoch 没有提升则提前停止该折"),
    "m_optimiser": ("The model was optimised with AdamW (learning rate {lr}{multiplied}; weight decay {wd}, not applied "
                    "to biases, normalisation layers, embedding tables and the scale), in batches of {batch}, with a "
                    "linear warm-up over {warmup} epoch(s) followed by cosine decay, for up to {epochs} epochs per "
                    "fold{patience}.",
                    "模型用 AdamW 优化（学习率 {lr}{multiplied}；权重衰减 {wd}，不作用于偏置、归一化层、嵌入表和缩放系数），批次大小 "
                    "{batch}，先线性预热 {warmup} 个 epoch，再余弦衰减，每折最多 {epochs} 个 epoch{patience}。"),
    "m_calibrated": ("Each fold model's probabilities were calibrated by temperature scaling (one temperature fitted by "
                     "minimising the negative log-likelihood, Guo et al. 2017) on {where}; predictions were unchanged.",
                     "每折模型的概率在{where}上用温度缩放校准（拟合一个温度使负对数似然最小，Guo et al. 2017）；预测类别不变。"),
    "m_where_inner": ("its inner validation split", "其内部验证集"),
    "m_where_fold": ("its own validation images", "其自身的验证图像"),
    # selection
    "m_select_inner": ("Each training fold was split once more, stratified{patient}, into an inner training part and "
                       "an inner validation part (at least {percent}, at least one image per class); the model trained "
                       "on the inner training part, and the epoch with the best inner-validation {monitor} was kept "
                       "(epoch 0, the untrained zero-shot model, competed as well){early}. The validation images of "
                       "the fold were never used to choose anything, so the fold and pooled estimates are not biased "
                       "by model selection.",
                       "每折的训练集再分层{patient}划分一次，分为内部训练部分和内部验证部分（至少 {percent}，每个类别至少一张图像）；"
                       "模型在内部训练部分上训练，保留内部验证 {monitor} 最好的 epoch（第 0 个 epoch，即未训练的零样本模型，也参与比较）"
                       "{early}。该折的验证图像从未用于任何选择，因此各折与汇总的估计不受模型选择偏差的影响。"),
    "m_by_patient": (" and by patient", "并按患者"),
    "m_early": (", which also decided early stopping", "，早停也据此决定"),
    "m_select_last": ("The model kept from each fold is the one after the last epoch: no epoch was chosen, so the "
                      "validation images played no part in choosing the model.",
                      "每折保留最后一个 epoch 之后的模型：没有选择 epoch，验证图像没有参与模型选择。"),
    "m_select_fold": ("The model kept from each fold is the epoch with the best validation {monitor}, chosen on the same "
                      "images that are scored (epoch 0, the model before any training, competed as well); the reported "
                      "numbers are therefore optimistic.",
                      "每折保留验证 {monitor} 最好的 epoch，选择所用的正是评分的同一批图像（第 0 个 epoch，即训练前的模型，也参与比较）；"
                      "因此报告的数字偏乐观。"),
    # statistics and software
    "m_ensemble": ("On the test set the fold models were combined by averaging their class probabilities.",
                   "在测试集上，各折模型的类别概率取平均后组合。"),
    "m_intervals": ("95% confidence intervals are {method} bootstrap intervals ({n} resamples of {unit}, seed "
                    "{seed}) of the pooled out-of-fold{and_test} predictions.",
                    "95% 置信区间为汇总折外{and_test}预测的 {method} bootstrap 区间（对{unit}重抽样 {n} 次，随机种子 {seed}）。"),
    "m_and_test": (" and test-set", "与测试集"),
    "m_threshold_inner": ("The decision threshold for {positive} was chosen on the pooled inner validation predictions "
                          "and then applied to the out-of-fold predictions by Youden's J.",
                          "{positive} 的决策阈值按 Youden 指数在汇总的内部验证预测上选择，再应用于折外预测。"),
    "m_threshold_oof": ("The decision threshold for {positive} was chosen on the pooled out-of-fold predictions by "
                        "Youden's J.", "{positive} 的决策阈值按 Youden 指数在汇总的折外预测上选择。"),
    "m_software": ("Software: Python {python}, {listed}{commit}; trained on {device}{precision}",
                   "软件：Python {python}、{listed}{commit}；训练设备 {device}{precision}"),
    "m_commit": (", train_clip commit {commit}", "，train_clip 提交 {commit}"),
    "m_mixed": (" with {precision} mixed precision.", "，使用 {precision} 混合精度。"),
    "m_full": (" in full precision.", "，全精度。"),
}
