//! Training: the float PredNet with fake quantisation, in tch, and its export to an [`super::IntModel`].
