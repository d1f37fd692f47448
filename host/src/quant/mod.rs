//! int8 post-training quantization with TFLite semantics (DESIGN §7): BatchNorm folded, weights
//! symmetric per output channel in [−127, 127], activations asymmetric per tensor, bias int32 at
//! `s_in · s_w`, Q31 requantization (the arithmetic in `depthling_model::quant`, shared with the
//! engine), the last conv dequantizing straight to metres. The result is a validated `.dlm`.

mod calibrate;
mod lower;
pub mod qat;
mod report;

pub use calibrate::*;
pub use lower::*;
pub use qat::QatConfig;
pub use report::*;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::batch::images_to_tensor;
    use crate::eval::mean_abs_diff;
    use crate::nets::graph::GraphSpec;
    use crate::nets::graph::{Act, Interp, Node};
    use crate::nets::Net;
    use crate::sim::{render_many, Domain};
    use crate::train::predict;
    use calibrate::{choose_range, Histogram};
    use candle_core::Device;
    use depthling_model::QuantParams;

    fn conv(input: usize, oc: usize, k: usize, s: usize, bn: bool, act: Act) -> Node {
        Node::Conv {
            input,
            out_channels: oc,
            kernel: k,
            stride: s,
            depthwise: false,
            batch_norm: bn,
            act,
        }
    }

    #[test]
    fn fake_quant_rounds_clips_and_passes_gradient_inside_the_grid() {
        use crate::nets::graph::fake_quant;
        let dev = Device::Cpu;
        // scale 0.5, zero point −128: levels 0, 0.5, …, 127.5
        let q = QuantParams {
            scale: 0.5,
            zero_point: -128,
        };
        let x = candle_core::Var::new(&[-1.0f32, 0.2, 0.3, 0.74, 200.0], &dev).unwrap();
        let y = fake_quant(x.as_tensor(), q).unwrap();
        assert_eq!(y.to_vec1::<f32>().unwrap(), [0.0, 0.0, 0.5, 0.5, 127.5]);
        let g = y.sum_all().unwrap().backward().unwrap();
        let g = g.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(g, [0.0, 1.0, 1.0, 1.0, 0.0]);

        // weights: channel 0 max 1.27 → step 0.01; channel 1 max 127 → step 1
        let w =
            candle_core::Var::new(&[[0.004f32, -0.016, 1.27], [0.4, 0.6, -127.0]], &dev).unwrap();
        let y = crate::nets::graph::fake_quant_weights(w.as_tensor()).unwrap();
        let v = y.to_vec2::<f32>().unwrap();
        let want = [[0.0f32, -0.02, 1.27], [0.0, 1.0, -127.0]];
        for (a, b) in v.iter().flatten().zip(want.iter().flatten()) {
            assert!((a - b).abs() < 1e-6, "{v:?} != {want:?}");
        }
        let g = y.sum_all().unwrap().backward().unwrap();
        let g = g.get(w.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(g, [[1.0; 3], [1.0; 3]]);
    }

    /// The fake-quantized forward pass is a model of the int8 engine: much closer to what the
    /// engine computes than the f32 network is. And a QAT fine-tune moves the int8 model closer to
    /// the f32 network it started from than post-training quantization gets.
    #[test]
    fn fake_quant_tracks_the_engine_and_qat_beats_ptq() {
        let dev = Device::Cpu;
        let data = render_many(Domain::Ood, 32, 32, 3, 0, 24, false);
        let net = Net::new(crate::nets::preset("micro", 1.0).unwrap(), &dev, 4).unwrap();
        let f32_pred = predict(&net.net, &data, &dev).unwrap();
        let plan = calibrate(&net.net, &data, Calibration::MinMax, &dev).unwrap();
        let prov = Provenance::default();
        let ptq = quantize_with(&net.net, &plan, (32, 32), &prov).unwrap();
        let ptq_pred = run_int8(&depthling_model::Model::from_bytes(&ptq).unwrap(), &data).unwrap();

        let fq = plan.fake_quant();
        let mut fq_pred = Vec::new();
        for s in &data {
            let x = images_to_tensor(&[s.rgb.as_slice()], 32, 32, &dev).unwrap();
            let y = net.net.forward_fake_quant(&x, &fq).unwrap();
            fq_pred.push(y.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        }
        let f32_err = mean_abs_diff(&f32_pred, &ptq_pred);
        let fq_err = mean_abs_diff(&fq_pred, &ptq_pred);
        assert!(
            fq_err < 0.8 * f32_err,
            "fake-quant vs int8 {fq_err}, f32 vs int8 {f32_err}"
        );

        let cfg = QatConfig {
            epochs: 6,
            lr: 2e-5,
            batch_size: 4,
            seed: 1,
        };
        let losses = qat::finetune(&net, &plan, &data, &cfg, |_, _, _| {}).unwrap();
        assert_eq!(losses.len(), 6 * 6);
        let qat = quantize_with(&net.net, &plan, (32, 32), &prov).unwrap();
        let qat_pred = run_int8(&depthling_model::Model::from_bytes(&qat).unwrap(), &data).unwrap();
        let (ptq_err, qat_err) = (
            mean_abs_diff(&ptq_pred, &f32_pred),
            mean_abs_diff(&qat_pred, &f32_pred),
        );
        eprintln!("int8 vs f32: PTQ {ptq_err}, QAT {qat_err}; losses {losses:?}");
        assert!(qat_err < 0.8 * ptq_err, "PTQ {ptq_err}, QAT {qat_err}");
    }

    /// Every node kind, quantized, stays within a few percent of its f32 graph on the calibration
    /// images (this caught a sigmoid LUT indexed with the wrong zero point: 95 % error).
    #[test]
    fn each_node_kind_quantizes_close_to_f32() {
        let dev = Device::Cpu;
        let data = render_many(Domain::Ood, 32, 24, 5, 0, 6, false);
        let cases: Vec<(&str, Vec<Node>, f64)> = vec![
            (
                "conv",
                vec![
                    Node::Input,
                    conv(0, 8, 3, 1, false, Act::Relu),
                    conv(1, 1, 3, 1, false, Act::None),
                ],
                0.10,
            ),
            (
                "conv+bn 5x5 relu6",
                vec![
                    Node::Input,
                    conv(0, 8, 5, 1, true, Act::Relu6),
                    conv(1, 1, 3, 1, false, Act::None),
                ],
                0.10,
            ),
            (
                "stride2+upsample",
                vec![
                    Node::Input,
                    conv(0, 8, 3, 2, false, Act::Relu),
                    Node::Upsample {
                        input: 1,
                        factor: 2,
                        mode: Interp::Nearest,
                        like: None,
                    },
                    conv(2, 1, 3, 1, false, Act::None),
                ],
                0.10,
            ),
            (
                "add",
                vec![
                    Node::Input,
                    conv(0, 8, 3, 1, false, Act::Relu),
                    conv(1, 8, 3, 1, false, Act::None),
                    Node::Add {
                        a: 2,
                        b: 1,
                        act: Act::Relu,
                    },
                    conv(3, 1, 3, 1, false, Act::None),
                ],
                0.10,
            ),
            (
                "sigmoid",
                vec![
                    Node::Input,
                    conv(0, 8, 3, 1, false, Act::Sigmoid),
                    conv(1, 1, 3, 1, false, Act::None),
                ],
                0.10,
            ),
            (
                "squeeze-excitation",
                vec![
                    Node::Input,
                    conv(0, 8, 3, 1, false, Act::Relu),
                    Node::GlobalAvgPool { input: 1 },
                    conv(2, 8, 1, 1, false, Act::Sigmoid),
                    Node::Mul { input: 1, scale: 3 },
                    conv(4, 1, 3, 1, false, Act::None),
                ],
                0.10,
            ),
            (
                "concat",
                vec![
                    Node::Input,
                    conv(0, 8, 3, 1, false, Act::Relu),
                    conv(1, 4, 1, 1, false, Act::Relu6),
                    Node::Concat { inputs: vec![2, 1] },
                    conv(3, 1, 3, 1, false, Act::None),
                ],
                0.10,
            ),
        ];
        for (name, nodes, tolerance) in cases {
            let net = Net::new(
                GraphSpec {
                    name: name.into(),
                    nodes,
                    output_bias: 0.5,
                    input_channels: 3,
                },
                &dev,
                3,
            )
            .unwrap();
            let bytes = quantize(
                &net.net,
                &data,
                Calibration::MinMax,
                &Provenance::default(),
                &dev,
            )
            .unwrap();
            let model = depthling_model::Model::from_bytes(&bytes).unwrap();
            let f = predict(&net.net, &data, &dev).unwrap();
            let q = run_int8(&model, &data).unwrap();
            let (mut err, mut mag) = (0.0f64, 0.0f64);
            for (a, b) in f.iter().zip(&q) {
                for (x, y) in a.iter().zip(b) {
                    err += (x - y).abs() as f64;
                    mag += x.abs() as f64;
                }
            }
            let rel = err / mag;
            assert!(
                rel < tolerance,
                "{name}: int8 differs from f32 by {rel:.3} (relative)"
            );
        }
    }

    /// The student presets (depthwise convolutions, squeeze-excitation, bilinear upsampling, a
    /// full-resolution head) quantize and run in the int8 engine close to f32; the teachers and a
    /// cropping size are refused with the reason.
    #[test]
    fn student_presets_quantize_and_teachers_are_refused() {
        let dev = Device::Cpu;
        let data = render_many(Domain::Ood, 64, 32, 9, 0, 4, false);
        for arch in ["micro", "mbv2-mff"] {
            let net = Net::new(crate::nets::preset(arch, 1.0).unwrap(), &dev, 4).unwrap();
            // BatchNorm statistics from a few training-mode passes, as after training
            for chunk in data.chunks(2) {
                let (x, _, _) = crate::data::batch::to_tensors(chunk, 3, &dev).unwrap();
                net.net.forward_t(&x, true).unwrap();
            }
            let bytes = quantize(
                &net.net,
                &data,
                Calibration::MinMax,
                &Provenance::default(),
                &dev,
            )
            .unwrap();
            let model = depthling_model::Model::from_bytes(&bytes).unwrap();
            let (f, q) = (
                predict(&net.net, &data, &dev).unwrap(),
                run_int8(&model, &data).unwrap(),
            );
            let (mut err, mut mag) = (0.0f64, 0.0f64);
            for (a, b) in f.iter().zip(&q) {
                for (x, y) in a.iter().zip(b) {
                    err += (x - y).abs() as f64;
                    mag += x.abs() as f64;
                }
            }
            assert!(
                err / mag < 0.05,
                "{arch}: int8 differs from f32 by {:.3}",
                err / mag
            );
        }
        let teacher =
            Net::new(crate::nets::preset("resnet18-mff", 0.25).unwrap(), &dev, 4).unwrap();
        let e = quantize(
            &teacher.net,
            &data,
            Calibration::MinMax,
            &Provenance::default(),
            &dev,
        )
        .unwrap_err();
        assert!(e.to_string().contains("7×7"), "{e}");
        let odd = render_many(Domain::Ood, 40, 36, 9, 0, 1, false);
        let micro = Net::new(crate::nets::preset("micro", 1.0).unwrap(), &dev, 4).unwrap();
        let e = quantize(
            &micro.net,
            &odd,
            Calibration::MinMax,
            &Provenance::default(),
            &dev,
        )
        .unwrap_err();
        assert!(e.to_string().contains("divisible by 32"), "{e}");
    }

    #[test]
    fn calibrators_clip_outliers_and_stay_inside_the_observed_range() {
        // 10 000 values in [0, 1] and one outlier at 100
        let mut values: Vec<f32> = (0..10_000).map(|i| i as f32 / 10_000.0).collect();
        values.push(100.0);
        let mut h = Histogram::new(0.0, 100.0);
        h.add(&values);
        let mm = (0.0, 100.0);
        assert_eq!(choose_range(Calibration::MinMax, mm, Some(&h)), mm);
        let (a, b) = choose_range(Calibration::Percentile, mm, Some(&h));
        assert_eq!(a, 0.0);
        assert!(b < 2.0, "percentile kept the outlier: {b}");
        let (a, b) = choose_range(Calibration::Mse, mm, Some(&h));
        assert_eq!(a, 0.0);
        assert!(b < 100.0 && b > 0.0, "mse range {b}");
        assert!(h.quant_error(0.0, b) <= h.quant_error(0.0, 100.0));
        assert!((h.quantile(0.5) - 0.5).abs() < 0.1);
        for c in ["minmax", "percentile", "mse"] {
            assert_eq!(Calibration::parse(c).unwrap().name(), c);
        }
        assert!(Calibration::parse("kl").is_err());
    }

    #[test]
    fn layer_report_covers_every_op_with_an_output() {
        let dev = Device::Cpu;
        let data = render_many(Domain::Ood, 32, 24, 5, 0, 4, false);
        let nodes = vec![
            Node::Input,
            conv(0, 8, 3, 2, true, Act::Relu),
            Node::Upsample {
                input: 1,
                factor: 2,
                mode: Interp::Bilinear,
                like: None,
            },
            conv(2, 1, 3, 1, false, Act::None),
        ];
        let net = Net::new(
            GraphSpec {
                name: "r".into(),
                nodes,
                output_bias: 0.5,
                input_channels: 3,
            },
            &dev,
            1,
        )
        .unwrap();
        for calibration in [
            Calibration::MinMax,
            Calibration::Percentile,
            Calibration::Mse,
        ] {
            let bytes =
                quantize(&net.net, &data, calibration, &Provenance::default(), &dev).unwrap();
            let model = depthling_model::Model::from_bytes(&bytes).unwrap();
            let report = layer_report(&net.net, &model, &data, &dev).unwrap();
            assert_eq!(
                report.iter().map(|l| l.op).collect::<Vec<_>>(),
                vec![0, 1, 2]
            );
            for l in &report {
                assert!(
                    l.sqnr_db > 15.0,
                    "{calibration:?}: op {} ({}) SQNR {:.1} dB",
                    l.op,
                    l.kind,
                    l.sqnr_db
                );
            }
        }
    }

    #[test]
    fn range_parameters_cover_zero_and_the_range() {
        let q = params_for_range(0.0, 6.0);
        assert_eq!(q.zero_point, -128);
        assert!((q.scale - 6.0 / 255.0).abs() < 1e-7);
        let q = params_for_range(-1.0, 1.0);
        assert!((q.zero_point as f32 - (-0.5)).abs() <= 0.5 + 1e-6);
        let q = params_for_range(2.0, 3.0); // zero must stay representable
        assert_eq!(q.zero_point, -128);
    }
}
