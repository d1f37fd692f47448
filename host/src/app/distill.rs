//! `depthling distill --method kd|ddd|aux|adu`: a student from a teacher.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use candle_core::Device;

use super::train::{TrainOptions, TrainReport};
use super::{parse_arg, training_progress};
use crate::data::{Dataset, Sample};
use crate::distill::adu::AduOptions;
use crate::distill::ddd::BnLoss;
use crate::distill::{aux, ddd, kd, DddOptions};
use crate::error::{Error, Result};
use crate::io::FileKind;
use crate::nets::Net;
use crate::teacher::onnx::{OnnxTeacher, TeacherOptions, TeacherOutput};
use crate::teacher::Teacher;

/// The distillation method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// The teacher's predictions on unlabeled images.
    Kd,
    /// KD with object mixing and the BatchNorm-statistics transformation network.
    Ddd,
    /// Ground truth of labeled sets plus KD on them and on unlabeled images (LW).
    Aux,
    /// A stereo teacher's features and depth, weighted by attention, focal depth and the
    /// student's uncertainty, plus ground truth (ADU-Depth).
    Adu,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Kd => "kd",
            Method::Ddd => "ddd",
            Method::Aux => "aux",
            Method::Adu => "adu",
        }
    }
}

impl FromStr for Method {
    type Err = Error;

    fn from_str(s: &str) -> Result<Method> {
        match s {
            "kd" => Ok(Method::Kd),
            "ddd" => Ok(Method::Ddd),
            "aux" => Ok(Method::Aux),
            "adu" => Ok(Method::Adu),
            other => Err(Error::Usage(format!(
                "unknown method {other:?}; known: kd, ddd, aux, adu"
            ))),
        }
    }
}

/// DDD's switches (`distill --method ddd`).
#[derive(Clone, Debug, clap::Args)]
pub struct DddFlags {
    /// No object-wise mixing.
    #[arg(long)]
    pub no_mix: bool,
    /// Up to this many objects pasted into each image.
    #[arg(long, default_value_t = 3)]
    pub max_objects: usize,
    /// No transformation network.
    #[arg(long)]
    pub no_transform: bool,
    /// Weight of mean|x′ − x| in the transformation network's loss.
    #[arg(long, default_value_t = 0.1)]
    pub identity_weight: f64,
    /// The transformation network is updated once every this many student steps.
    #[arg(long, default_value_t = 1)]
    pub transform_every: usize,
    /// How the statistics loss weighs the teacher's BatchNorm layers: normalized (each layer in
    /// units of its running statistics) or raw (DeepInversion's sum in the layers' own units).
    #[arg(long, default_value = "normalized", value_parser = parse_arg::<BnLoss>)]
    pub bn_loss: BnLoss,
    /// Share of the images used, e.g. 1/6 (the image budget).
    #[arg(long, default_value = "1", value_parser = parse_fraction)]
    pub images_fraction: f64,
}

fn parse_fraction(s: &str) -> std::result::Result<f64, String> {
    crate::distill::parse_fraction(s).map_err(|e| e.to_string())
}

impl DddFlags {
    pub fn options(&self) -> DddOptions {
        DddOptions {
            mix: !self.no_mix,
            max_objects: self.max_objects,
            transform: !self.no_transform,
            identity_weight: self.identity_weight,
            transform_every: self.transform_every,
            bn_loss: self.bn_loss,
            ..Default::default()
        }
    }
}

/// ADU-Depth's switches (`distill --method adu`).
#[derive(Clone, Debug, clap::Args)]
pub struct AduFlags {
    /// No response distillation (focal-depth and uncertainty weighted).
    #[arg(long)]
    pub no_response: bool,
    /// No attention-weighted feature distillation at the encoder taps.
    #[arg(long)]
    pub no_feature: bool,
    /// γ of the focal-depth weight (|d_s − d_t|/d_t)^γ.
    #[arg(long, default_value_t = AduOptions::default().gamma)]
    pub focal_gamma: f64,
    /// Weight of the feature-distillation term.
    #[arg(long, default_value_t = AduOptions::default().feature_weight)]
    pub feature_weight: f64,
}

impl AduFlags {
    /// ADU's options; `--kd-weight` is its response weight.
    pub fn options(&self, kd_weight: f64) -> AduOptions {
        AduOptions {
            response: !self.no_response,
            feature: !self.no_feature,
            gamma: self.focal_gamma,
            response_weight: kd_weight,
            feature_weight: self.feature_weight,
        }
    }
}

/// How an ONNX teacher is fed and read (ignored for depthling's own checkpoints).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct TeacherArgs {
    /// Per-channel mean subtracted from [0, 1] RGB before an ONNX teacher, when its graph does
    /// not normalise (e.g. ImageNet's 0.485,0.456,0.406).
    #[arg(long, value_parser = parse_triple)]
    pub teacher_mean: Option<Triple>,
    /// Per-channel standard deviation the RGB is divided by (e.g. 0.229,0.224,0.225).
    #[arg(long, value_parser = parse_triple)]
    pub teacher_std: Option<Triple>,
    /// depth (metres) or inverse (inverse depth or disparity: depth = --teacher-scale / output).
    #[arg(long, default_value = "depth", value_parser = parse_arg::<TeacherOutput>)]
    pub teacher_output: TeacherOutput,
    /// Scale of the teacher's output: depth = scale · output, or scale / output with
    /// `--teacher-output inverse`.
    #[arg(long, default_value_t = 1.0)]
    pub teacher_scale: f32,
    /// ADU: the ONNX tensor names of the teacher's feature maps, comma-separated
    /// (`depthling profile --model T.onnx` lists candidates); default: the encoder's last map
    /// at each downsampling factor.
    #[arg(long, value_delimiter = ',')]
    pub teacher_taps: Vec<String>,
}

/// Three comma-separated numbers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Triple(pub [f32; 3]);

fn parse_triple(s: &str) -> std::result::Result<Triple, String> {
    let v: Vec<f32> = s
        .split(',')
        .map(|p| p.trim().parse::<f32>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| format!("{s:?} is not three comma-separated numbers"))?;
    match v.as_slice() {
        [a, b, c] if v.iter().all(|x| x.is_finite()) => Ok(Triple([*a, *b, *c])),
        _ => Err(format!("{s:?} is not three comma-separated numbers")),
    }
}

impl TeacherArgs {
    pub fn options(&self) -> Result<TeacherOptions> {
        if self.teacher_mean.is_some() != self.teacher_std.is_some() {
            return Err(Error::Usage(
                "--teacher-mean and --teacher-std go together".into(),
            ));
        }
        if let Some(Triple(s)) = self.teacher_std {
            if s.iter().any(|&v| v <= 0.0) {
                return Err(Error::Usage("--teacher-std must be positive".into()));
            }
        }
        if !(self.teacher_scale.is_finite() && self.teacher_scale > 0.0) {
            return Err(Error::Usage(
                "--teacher-scale must be a positive number".into(),
            ));
        }
        Ok(TeacherOptions {
            mean: self.teacher_mean.map(|t| t.0),
            std: self.teacher_std.map(|t| t.0),
            output: self.teacher_output,
            scale: self.teacher_scale,
            taps: self.teacher_taps.clone(),
        })
    }
}

/// Settings of `depthling distill`.
#[derive(Clone, Debug, clap::Args)]
pub struct DistillConfig {
    /// kd (teacher's predictions on --images), ddd (kd + object mixing + transformation
    /// network), aux (ground truth of --labeled + KD on --labeled and --images), adu (ground
    /// truth of --labeled + a stereo teacher's features and depth, weighted by attention,
    /// focal depth and the student's uncertainty, on --labeled and --images).
    #[arg(long, value_parser = parse_arg::<Method>)]
    pub method: Method,
    #[arg(long)]
    pub teacher: PathBuf,
    /// Unlabeled images (depth, if present, is not used): kd and ddd need them; for aux the
    /// auxiliary set U. A dataset folder, a CSV list, or a folder of PNG images.
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// aux: a labeled dataset, the target set X; give it again for a labeled auxiliary set
    /// (the X∪U′ setting).
    #[arg(long)]
    pub labeled: Vec<PathBuf>,
    /// aux: weight of the KD term against the ground-truth term; adu: of the response term.
    #[arg(long, default_value_t = 1.0)]
    pub kd_weight: f64,
    #[arg(long, default_value = "demo-student")]
    pub arch: String,
    #[command(flatten)]
    pub teacher_args: TeacherArgs,
    #[command(flatten)]
    pub options: TrainOptions,
    #[command(flatten)]
    pub ddd: DddFlags,
    #[command(flatten)]
    pub adu: AduFlags,
    #[arg(long)]
    pub out: PathBuf,
}

/// A teacher loaded from a file, by its content.
pub enum LoadedTeacher {
    /// A depthling checkpoint.
    Native(Net),
    /// An ONNX export (PyTorch's), imported into the trainable graph.
    Onnx(Box<OnnxTeacher>),
}

impl LoadedTeacher {
    /// Loads a teacher for images of `size` (`(width, height)`).
    pub fn load(
        path: &Path,
        args: &TeacherArgs,
        size: (usize, usize),
        device: &Device,
        quiet: bool,
    ) -> Result<LoadedTeacher> {
        match FileKind::of_file(path)? {
            FileKind::Onnx => {
                let t = OnnxTeacher::load(path, args.options()?, size, device)?;
                if t.resized() {
                    let (w, h) = t.run_size();
                    crate::progress::line(
                        quiet,
                        &format!(
                            "teacher {} takes {w}×{h}: the {}×{} images are resized for it, and its depth back",
                            path.display(),
                            size.0,
                            size.1
                        ),
                    );
                }
                Ok(LoadedTeacher::Onnx(Box::new(t)))
            }
            _ => Ok(LoadedTeacher::Native(Net::load(path, device)?.0)),
        }
    }

    pub fn teacher(&self) -> &dyn Teacher {
        match self {
            LoadedTeacher::Native(n) => &n.net,
            LoadedTeacher::Onnx(t) => t.as_ref(),
        }
    }

    /// Parameters (an ONNX file's float initializers).
    pub fn params(&self) -> u64 {
        match self {
            LoadedTeacher::Native(n) => n.net.spec().params() as u64,
            LoadedTeacher::Onnx(t) => t.params(),
        }
    }
}

/// `depthling distill --method kd|ddd|aux|adu`: the student learns the teacher's predictions on
/// (unlabeled) images; `ddd` adds object mixing and the transformation network; `aux` adds the
/// ground truth of labeled sets (the LW paper's settings X, U, X∪U, X∪U′); `adu` distills a
/// stereo teacher's features and depth with ADU-Depth's weighting, plus the ground truth.
pub fn distill(cfg: &DistillConfig) -> Result<TrainReport> {
    let start = Instant::now();
    let method = cfg.method;
    let adu_options = cfg.adu.options(cfg.kd_weight);
    if method == Method::Adu {
        adu_options.check()?;
    }
    let unlabeled_only = matches!(method, Method::Kd | Method::Ddd);
    if unlabeled_only && !cfg.labeled.is_empty() {
        return Err(Error::Usage(format!(
            "--labeled is for --method aux or adu (ground truth plus distillation); {} distills from unlabeled --images only",
            method.name()
        )));
    }
    let o = &cfg.options;
    let device = o.device.device()?;
    // the teacher's kind is checked before the images are read
    FileKind::of_file(&cfg.teacher)?;
    let open = |p: &Path| Dataset::open(p, o.depth_scale)?.load_all(None);
    let unlabeled = match &cfg.images {
        Some(p) => crate::distill::budget(open(p)?, cfg.ddd.images_fraction)?,
        None if unlabeled_only => {
            return Err(Error::Usage(format!(
                "--method {} needs --images DIR",
                method.name()
            )))
        }
        None => Vec::new(),
    };
    let labeled = cfg
        .labeled
        .iter()
        .map(|p| {
            Dataset::open(p, o.depth_scale)?
                .require_labels("--labeled")?
                .load_all(None)
        })
        .collect::<Result<Vec<_>>>()?;
    let Some(first) = labeled.iter().flatten().next().or(unlabeled.first()) else {
        return Err(Error::Usage(format!(
            "--method {} needs --labeled DIR (labeled images), --images DIR (unlabeled images), or both",
            method.name()
        )));
    };
    let (w, h) = (first.width, first.height);
    let loaded = LoadedTeacher::load(&cfg.teacher, &cfg.teacher_args, (w, h), &device, o.quiet)?;
    let teacher = loaded.teacher();
    teacher.check_size(w, h)?;
    if let LoadedTeacher::Onnx(t) = &loaded {
        if method == Method::Adu && adu_options.feature && t.resized() {
            let (tw, th) = t.run_size();
            return Err(Error::Usage(format!(
                "{}: ADU's feature distillation compares maps at the student's size, but this teacher runs at {tw}×{th}, not {w}×{h}: export it with dynamic height and width or at {w}×{h}, or pass --no-feature",
                cfg.teacher.display()
            )));
        }
    }
    let student = o.network(&cfg.arch, w, h, &device)?;
    let images = labeled.iter().map(Vec::len).sum::<usize>() + unlabeled.len();
    let tc = o.config(images, &cfg.out);
    let progress = training_progress(o.quiet, "distill", tc.steps, tc.batch_size);
    let labeled: Vec<&[Sample]> = labeled.iter().map(Vec::as_slice).collect();
    let losses = match method {
        Method::Kd => crate::train::train(
            &student,
            &unlabeled,
            &mut kd::Kd::new(teacher),
            &tc,
            progress,
        )?,
        Method::Ddd => ddd::distill(
            &student,
            teacher,
            &unlabeled,
            &tc,
            &cfg.ddd.options(),
            progress,
        )?,
        Method::Aux => aux::aux(
            &student,
            teacher,
            &labeled,
            &unlabeled,
            &tc,
            cfg.kd_weight,
            progress,
        )?,
        Method::Adu => crate::distill::adu::adu(
            &student,
            teacher,
            &labeled,
            &unlabeled,
            &tc,
            &adu_options,
            progress,
        )?,
    };
    student.save(
        &cfg.out,
        &[
            ("kind", "student".into()),
            ("size", format!("{w}x{h}")),
            ("method", method.name().into()),
            ("teacher", cfg.teacher.display().to_string()),
        ],
    )?;
    Ok(TrainReport::new(
        "student", &cfg.arch, &student, images, &losses, start, &cfg.out,
    ))
}
