//! Fast training kernels as candle custom ops. candle's CPU convolution backward goes through
//! `conv_transpose2d`, a plain loop; here a convolution is `im2col` and gemms (the gemm crate
//! candle's matmul uses), and its backward pass is two more: `col2im(wᵀ · ∂y)` for the input,
//! the exact adjoint of `im2col`, and `∂y · im2col(x)ᵀ` for the weights. The column matrices
//! live inside the ops and never become tensors of candle's graph, whose backward pass would
//! otherwise zero-fill and add a gradient the size of each of them. Gradients are first order.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

pub mod batch_norm;
pub mod bilinear;
pub mod depthwise;

pub use batch_norm::{batch_norm_act, BnAct};
pub use bilinear::upsample_bilinear;
pub use depthwise::depthwise_conv2d;

/// Geometry of one convolution's patch extraction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Patches {
    pub batch: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl Patches {
    pub fn out_height(&self) -> usize {
        (self.height + 2 * self.padding - self.kernel) / self.stride + 1
    }
    pub fn out_width(&self) -> usize {
        (self.width + 2 * self.padding - self.kernel) / self.stride + 1
    }
    /// Output positions per image.
    fn positions(&self) -> usize {
        self.out_height() * self.out_width()
    }
    /// Rows of the column matrix: `C·k·k`.
    fn rows(&self) -> usize {
        self.channels * self.kernel * self.kernel
    }
    /// Output indices `o` (of `n_out`) whose input coordinate `o·s − p + tap` lies in `0..n_in`.
    fn valid(&self, tap: usize, n_in: usize, n_out: usize) -> std::ops::Range<usize> {
        let s = self.stride;
        // o·s + tap ≥ p  and  o·s + tap − p ≤ n_in − 1
        let lo = self.padding.saturating_sub(tap).div_ceil(s);
        let hi = if n_in + self.padding > tap {
            (n_in + self.padding - tap - 1) / s + 1
        } else {
            0
        };
        lo.min(n_out)..hi.min(n_out).max(lo.min(n_out))
    }

    /// Visits, for kernel tap `(ky, kx)`, every output row `oy` with its valid column range and
    /// the input offset of that range's first element: `f(oy, ox_range, first_input_offset)`.
    #[inline]
    fn for_rows(
        &self,
        ky: usize,
        kx: usize,
        mut f: impl FnMut(usize, std::ops::Range<usize>, usize),
    ) {
        let (ho, wo) = (self.out_height(), self.out_width());
        let cols = self.valid(kx, self.width, wo);
        if cols.is_empty() {
            return;
        }
        for oy in self.valid(ky, self.height, ho) {
            let y = oy * self.stride + ky - self.padding;
            let x0 = cols.start * self.stride + kx - self.padding;
            f(oy, cols.clone(), y * self.width + x0);
        }
    }
}

/// `(N, C, H, W)` of a 4-d layout.
fn dims(layout: &Layout, op: &str) -> Result<(usize, usize, usize, usize)> {
    match layout.dims() {
        &[n, c, h, w] => Ok((n, c, h, w)),
        d => candle_core::bail!("{op}: expected a 4-d tensor, got {d:?}"),
    }
}

fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [f32]> {
    let data = match storage {
        CpuStorage::F32(v) => v.as_slice(),
        _ => candle_core::bail!("{op}: only f32 is supported"),
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

/// `[N, C, H, W]` → `[C·k·k, N·Ho·Wo]` (zero padding) into `cols`, every element written.
pub fn im2col(p: Patches, x: &[f32], cols: &mut [f32]) {
    let (l, k, plane) = (p.positions(), p.kernel, p.height * p.width);
    let (ho, wo) = (p.out_height(), p.out_width());
    cols.par_chunks_mut(p.batch * l)
        .enumerate()
        .for_each(|(r, row)| {
            let (c, ky, kx) = (r / (k * k), (r / k) % k, r % k);
            let (rows, span) = (p.valid(ky, p.height, ho), p.valid(kx, p.width, wo));
            for n in 0..p.batch {
                let src = &x[(n * p.channels + c) * plane..(n * p.channels + c + 1) * plane];
                let dst = &mut row[n * l..(n + 1) * l];
                for oy in 0..ho {
                    let out = &mut dst[oy * wo..(oy + 1) * wo];
                    if !rows.contains(&oy) || span.is_empty() {
                        out.fill(0.0);
                        continue;
                    }
                    out[..span.start].fill(0.0);
                    out[span.end..].fill(0.0);
                    let y = oy * p.stride + ky - p.padding;
                    let first = y * p.width + span.start * p.stride + kx - p.padding;
                    let out = &mut out[span.clone()];
                    if p.stride == 1 {
                        out.copy_from_slice(&src[first..first + out.len()]);
                    } else {
                        for (j, d) in out.iter_mut().enumerate() {
                            *d = src[first + j * p.stride];
                        }
                    }
                }
            }
        });
}

thread_local! {
    /// Column matrices are used inside one op and dropped: the buffer stays with the thread.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Transposed operands (of [`gemm_abt`], or an image put channels last), used while `SCRATCH`
    /// holds the columns.
    static SCRATCH_T: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` on a scratch buffer of `len` values (contents unspecified: `f` writes before it
/// reads), kept from one call to the next.
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    with_buffer(&SCRATCH, len, f)
}

fn with_buffer<R>(
    key: &'static std::thread::LocalKey<std::cell::RefCell<Vec<f32>>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            f(&mut buf[..len])
        }
        // already in use further up this thread's stack
        Err(_) => f(&mut vec![0f32; len]),
    })
}

/// `src` (`rows × cols`, row-major) → `dst` (`cols × rows`, row-major), in tiles that stay in
/// the L1 cache.
fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    const TILE: usize = 16;
    for i0 in (0..rows).step_by(TILE) {
        let i1 = (i0 + TILE).min(rows);
        for j0 in (0..cols).step_by(TILE) {
            let j1 = (j0 + TILE).min(cols);
            for i in i0..i1 {
                let row = &src[i * cols + j0..i * cols + j1];
                for (j, &v) in (j0..j1).zip(row) {
                    dst[j * rows + i] = v;
                }
            }
        }
    }
}

/// A long product is moved to gemm's fast layout where `k ≥ TRANSPOSE_FROM · m` (see
/// [`gemm_abt`]).
const TRANSPOSE_FROM: usize = 64;

/// `dst (m×n) = a (m×k) · bᵀ` with `b` given as `n×k`, all row-major: the weight gradient
/// `∂y · colsᵀ`, whose `k` is the number of output positions. gemm runs such a product, its right
/// side contiguous along `k`, at a tenth of its usual speed when `k` is long and `m` small (19
/// against 200 GFLOP/s for 16 output channels at 64×48 on AVX-512); with `b` transposed first,
/// contiguous along `n`, it runs at full speed. The transpose paid for itself at `k` = 128·m and
/// 192·m (16×144×3072: 0.73 → 0.26 ms with it) but not at 24·m, hence the threshold 64.
fn gemm_abt(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    a: &[f32],
    b: &[f32],
    parallel: bool,
) -> Result<()> {
    let am = Mat {
        data: a,
        rs: k,
        cs: 1,
    };
    if k < TRANSPOSE_FROM * m || b.len() < n * k {
        let bm = Mat {
            data: b,
            rs: 1,
            cs: k,
        };
        return gemm((m, n, k), dst, n, am, bm, parallel);
    }
    with_buffer(&SCRATCH_T, n * k, |bt| {
        transpose(&b[..n * k], n, k, bt);
        let bm = Mat {
            data: bt,
            rs: n,
            cs: 1,
        };
        gemm((m, n, k), dst, n, am, bm, parallel)
    })
}

/// One image, channels last (`[H·W, C]`) → `[Ho·Wo, k·k·C]`: row `oy·Wo + ox` is the patch at
/// that output position, taps outer and channels inner (zero padding), every element written.
/// The weight gradient's column matrix in the layout gemm multiplies fastest (see
/// [`Conv::weight_grad_rows`]); each tap is one copy of `C` values.
fn im2col_rows(p: Patches, x_hwc: &[f32], rows: &mut [f32]) {
    let (k, c, wo) = (p.kernel, p.channels, p.out_width());
    for (pos, row) in rows.chunks_mut(k * k * c).enumerate() {
        let (oy, ox) = (pos / wo, pos % wo);
        for ky in 0..k {
            let y = (oy * p.stride + ky).checked_sub(p.padding);
            for kx in 0..k {
                let x = (ox * p.stride + kx).checked_sub(p.padding);
                let dst = &mut row[(ky * k + kx) * c..(ky * k + kx + 1) * c];
                match (y, x) {
                    (Some(y), Some(x)) if y < p.height && x < p.width => {
                        let at = (y * p.width + x) * c;
                        dst.copy_from_slice(&x_hwc[at..at + c]);
                    }
                    _ => dst.fill(0.0),
                }
            }
        }
    }
}

/// Channels from which the weight gradient gathers channels-last patch rows: below it a tap's
/// copy is too short to pay for itself.
const ROWS_FROM_CHANNELS: usize = 16;

/// `[C·k·k, N·Ho·Wo]` → `[N, C, H, W]` added onto `x`, summing overlapping patches: the adjoint
/// of [`im2col`].
pub fn col2im(p: Patches, cols: &[f32], x: &mut [f32]) {
    let (l, k, plane) = (p.positions(), p.kernel, p.height * p.width);
    let wo = p.out_width();
    // one (n, c) plane per task: disjoint writes
    x.par_chunks_mut(plane).enumerate().for_each(|(nc, dst)| {
        let (n, c) = (nc / p.channels, nc % p.channels);
        for ky in 0..k {
            for kx in 0..k {
                let r = (c * k + ky) * k + kx;
                let src = &cols[r * p.batch * l + n * l..r * p.batch * l + (n + 1) * l];
                p.for_rows(ky, kx, |oy, range, first| {
                    let from = &src[oy * wo + range.start..oy * wo + range.end];
                    if p.stride == 1 {
                        axpy(&mut dst[first..first + from.len()], 1.0, from);
                    } else {
                        for (j, &v) in from.iter().enumerate() {
                            dst[first + j * p.stride] += v;
                        }
                    }
                });
            }
        }
    });
}

/// `y += a·x`, element by element (a loop the compiler vectorises).
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (d, &v) in y.iter_mut().zip(x) {
        *d += a * v;
    }
}

/// Two sums over paired slices, `(Σ f(x_j, y_j).0, Σ f(x_j, y_j).1)`, each kept in eight f32
/// lanes added up in a fixed order: a reduction the compiler vectorises (a single running f32
/// sum cannot be, float addition does not reassociate), with the same result on every run. A
/// caller that needs one sum leaves the second term 0.
#[inline(always)]
fn lanes(x: &[f32], y: &[f32], f: impl Fn(f32, f32) -> (f32, f32)) -> (f32, f32) {
    let (mut s0, mut s1) = ([0f32; 8], [0f32; 8]);
    let (cx, cy) = (x.chunks_exact(8), y.chunks_exact(8));
    let (mut t0, mut t1) = (0f32, 0f32);
    for (&v, &w) in cx.remainder().iter().zip(cy.remainder()) {
        let (a, b) = f(v, w);
        (t0, t1) = (t0 + a, t1 + b);
    }
    for (xs, ys) in cx.zip(cy) {
        for i in 0..8 {
            let (a, b) = f(xs[i], ys[i]);
            s0[i] += a;
            s1[i] += b;
        }
    }
    (s0.iter().sum::<f32>() + t0, s1.iter().sum::<f32>() + t1)
}

/// The sum of the `len`-value parts of `parts`, added in their order: per-image partial
/// gradients summed the same way on every run, whichever thread computed each.
fn sum_in_order(parts: &[f32], len: usize) -> Vec<f32> {
    let mut sum = vec![0f32; len];
    for part in parts.chunks_exact(len) {
        axpy(&mut sum, 1.0, part);
    }
    sum
}

/// A strided view of an f32 matrix: element (i, j) at `data[i·rs + j·cs]`.
#[derive(Clone, Copy)]
struct Mat<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

/// Index one past the last element of a `rows × cols` matrix with strides `rs`, `cs`.
fn extent(rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * rs + (cols - 1) * cs + 1
    }
}

/// `dst = lhs · rhs`, `lhs` m×k, `rhs` k×n, `dst` m×n with row stride `dst_rs` (columns
/// contiguous), by the gemm crate candle's own matmul runs on: on rayon's threads if `parallel`,
/// otherwise on the calling thread (the caller already splits the work). Every view is checked
/// to lie inside its slice.
fn gemm(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    lhs: Mat,
    rhs: Mat,
    parallel: bool,
) -> Result<()> {
    if extent(m, n, dst_rs, 1) > dst.len()
        || extent(m, k, lhs.rs, lhs.cs) > lhs.data.len()
        || extent(k, n, rhs.rs, rhs.cs) > rhs.data.len()
    {
        candle_core::bail!("gemm: a {m}×{k}·{k}×{n} product does not fit its buffers");
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        for i in 0..m {
            dst[i * dst_rs..i * dst_rs + n].fill(0.0);
        }
        return Ok(());
    }
    let threads = rayon::current_num_threads();
    let parallelism = if parallel && threads > 1 {
        ::gemm::Parallelism::Rayon(threads)
    } else {
        ::gemm::Parallelism::None
    };
    // SAFETY: the extents above keep every element the three views address inside its slice,
    // and `dst` is borrowed mutably, so it overlaps neither input.
    unsafe {
        ::gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            false,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
    Ok(())
}

/// `[N, O, L]` → `[O, N·L]` (`back`: the reverse).
fn regroup(src: &[f32], n: usize, o: usize, l: usize, back: bool) -> Vec<f32> {
    let mut dst = vec![0f32; src.len()];
    dst.par_chunks_mut(l).enumerate().for_each(|(row, out)| {
        // row indexes dst's [·, ·, L] blocks: (i, c) of [N, O] going back, (c, i) of [O, N]
        let (i, c) = if back {
            (row / o, row % o)
        } else {
            (row % n, row / n)
        };
        let from = if back { c * n + i } else { i * o + c };
        out.copy_from_slice(&src[from * l..(from + 1) * l]);
    });
    dst
}

/// Output positions from which a convolution works image by image: the images are spread over
/// rayon's threads, each with its own column buffer and a single-threaded gemm writing straight
/// into `[N, O, L]` (on two cores a fifth faster than threading each gemm). Below it the batch
/// goes through one threaded gemm on `[·, N·L]` and a regroup.
const PER_IMAGE: usize = 256;

/// A dense convolution `(x [N, C, H, W], w [O, C, k, k]) → [N, O, Ho, Wo]`: im2col and a gemm
/// per image (see [`PER_IMAGE`]; a 1×1, stride-1 convolution skips im2col and multiplies the
/// image itself). The backward pass is two ops of the same kind, so the column matrix and its
/// gradient never become tensors of the graph.
#[derive(Clone, Copy, Debug)]
pub struct Conv {
    pub patches: Patches,
    pub out_channels: usize,
}

/// ∂loss/∂x of a [`Conv`] from `(w, ∂loss/∂y)`: `col2im(wᵀ · ∂y)`.
#[derive(Clone, Copy, Debug)]
pub struct ConvInputGrad(pub Conv);

/// ∂loss/∂w of a [`Conv`] from `(x, ∂loss/∂y)`: `Σ_n ∂y_n · im2col(x)_nᵀ`.
#[derive(Clone, Copy, Debug)]
pub struct ConvWeightGrad(pub Conv);

impl Conv {
    /// 1×1, stride 1, no padding: the image is its own column matrix.
    fn pointwise(&self) -> bool {
        let p = self.patches;
        p.kernel == 1 && p.stride == 1 && p.padding == 0
    }

    /// The two f32 operands of `op` (one of this convolution's ops), each named and checked
    /// against the number of values it must hold.
    fn operands<'a>(
        &self,
        op: &str,
        (s1, l1, what1, len1): (&'a CpuStorage, &Layout, &str, usize),
        (s2, l2, what2, len2): (&'a CpuStorage, &Layout, &str, usize),
    ) -> Result<(&'a [f32], &'a [f32])> {
        let (a, b) = (contiguous_f32(s1, l1, op)?, contiguous_f32(s2, l2, op)?);
        for (what, got, len) in [(what1, a.len(), len1), (what2, b.len(), len2)] {
            if got != len {
                candle_core::bail!(
                    "{op}: {what} has {got} values, expected {len} for {:?} → {} channels",
                    self.patches,
                    self.out_channels
                );
            }
        }
        Ok((a, b))
    }

    fn sizes(&self) -> (usize, usize, usize, usize, usize) {
        let p = self.patches;
        (
            p.batch,
            p.channels,
            self.out_channels,
            p.positions(),
            p.rows(),
        )
    }

    /// The same geometry for one image of the batch.
    fn one_image(&self) -> Patches {
        Patches {
            batch: 1,
            ..self.patches
        }
    }

    fn forward(&self, x: &[f32], w: &[f32]) -> Result<Vec<f32>> {
        let p = self.patches;
        let (n, c, o, l, r) = self.sizes();
        let wm = Mat {
            data: w,
            rs: r,
            cs: 1,
        };
        let mut y = vec![0f32; n * o * l];
        if l >= PER_IMAGE {
            // images side by side on rayon's threads, one single-threaded gemm each
            let (p1, plane) = (self.one_image(), c * p.height * p.width);
            y.par_chunks_mut(o * l)
                .enumerate()
                .try_for_each(|(i, yi)| -> Result<()> {
                    let xi = &x[i * plane..(i + 1) * plane];
                    if self.pointwise() {
                        let xm = Mat {
                            data: xi,
                            rs: l,
                            cs: 1,
                        };
                        return gemm((o, l, c), yi, l, wm, xm, false);
                    }
                    with_scratch(r * l, |cols| {
                        im2col(p1, xi, cols);
                        let cm = Mat {
                            data: cols,
                            rs: l,
                            cs: 1,
                        };
                        gemm((o, l, r), yi, l, wm, cm, false)
                    })
                })?;
            return Ok(y);
        }
        with_scratch(r * n * l, |cols| {
            im2col(p, x, cols);
            let all = Mat {
                data: cols,
                rs: n * l,
                cs: 1,
            };
            gemm((o, n * l, r), &mut y, n * l, wm, all, true)?;
            Ok(regroup(&y, n, o, l, true))
        })
    }

    fn input_grad(&self, w: &[f32], dy: &[f32]) -> Result<Vec<f32>> {
        let p = self.patches;
        let (n, c, o, l, r) = self.sizes();
        // wᵀ: r × o
        let wt = Mat {
            data: w,
            rs: 1,
            cs: r,
        };
        let plane = c * p.height * p.width;
        let mut dx = vec![0f32; n * plane];
        if l >= PER_IMAGE {
            let p1 = self.one_image();
            dx.par_chunks_mut(plane)
                .enumerate()
                .try_for_each(|(i, dxi)| -> Result<()> {
                    let gi = Mat {
                        data: &dy[i * o * l..(i + 1) * o * l],
                        rs: l,
                        cs: 1,
                    };
                    if self.pointwise() {
                        return gemm((c, l, o), dxi, l, wt, gi, false);
                    }
                    // every element of the column gradient is written by the gemm
                    with_scratch(r * l, |dcols| {
                        gemm((r, l, o), dcols, l, wt, gi, false)?;
                        col2im(p1, dcols, dxi);
                        Ok(())
                    })
                })?;
            return Ok(dx);
        }
        with_scratch(r * n * l, |dcols| {
            let rows = regroup(dy, n, o, l, false);
            let g = Mat {
                data: &rows,
                rs: n * l,
                cs: 1,
            };
            gemm((r, n * l, o), dcols, n * l, wt, g, true)?;
            col2im(p, dcols, &mut dx);
            Ok(dx)
        })
    }

    /// One image's weight gradient `∂y · rows` from channels-last patch rows ([`im2col_rows`]),
    /// which gemm reads contiguously along the output: computed in `(o, tap, c)` order, then put
    /// into the weights' `(o, c, tap)`.
    fn weight_grad_rows(&self, xi: &[f32], gi: &[f32], dwi: &mut [f32]) -> Result<()> {
        let p = self.one_image();
        let (_, c, o, l, r) = self.sizes();
        let (hw, taps) = (p.height * p.width, p.kernel * p.kernel);
        with_buffer(&SCRATCH_T, c * hw + o * r, |buf| {
            let (x_hwc, by_tap) = buf.split_at_mut(c * hw);
            transpose(xi, c, hw, x_hwc);
            with_scratch(l * r, |rows| {
                im2col_rows(p, x_hwc, rows);
                let g = Mat {
                    data: gi,
                    rs: l,
                    cs: 1,
                };
                let rm = Mat {
                    data: rows,
                    rs: r,
                    cs: 1,
                };
                gemm((o, r, l), by_tap, r, g, rm, false)
            })?;
            for (dst, src) in dwi.chunks_mut(r).zip(by_tap.chunks(r)) {
                for (t, per_channel) in src.chunks(c).enumerate() {
                    for (ci, &v) in per_channel.iter().enumerate() {
                        dst[ci * taps + t] = v;
                    }
                }
            }
            Ok(())
        })
    }

    fn weight_grad(&self, x: &[f32], dy: &[f32]) -> Result<Vec<f32>> {
        let p = self.patches;
        let (n, c, o, l, r) = self.sizes();
        if l >= PER_IMAGE {
            // one partial gradient per image, summed in image order: the same on every run
            let (p1, plane) = (self.one_image(), c * p.height * p.width);
            let mut partial = vec![0f32; n * o * r];
            partial
                .par_chunks_mut(o * r)
                .enumerate()
                .try_for_each(|(i, dwi)| -> Result<()> {
                    let xi = &x[i * plane..(i + 1) * plane];
                    let gi = &dy[i * o * l..(i + 1) * o * l];
                    if self.pointwise() {
                        return gemm_abt((o, c, l), dwi, gi, xi, false);
                    }
                    if c >= ROWS_FROM_CHANNELS {
                        return self.weight_grad_rows(xi, gi, dwi);
                    }
                    with_scratch(r * l, |cols| {
                        im2col(p1, xi, cols);
                        gemm_abt((o, r, l), dwi, gi, cols, false)
                    })
                })?;
            return Ok(sum_in_order(&partial, o * r));
        }
        let mut dw = vec![0f32; o * r];
        with_scratch(r * n * l, |cols| {
            im2col(p, x, cols);
            let rows = regroup(dy, n, o, l, false);
            gemm_abt((o, r, n * l), &mut dw, &rows, cols, true)?;
            Ok(dw)
        })
    }
}

impl CustomOp2 for Conv {
    fn name(&self) -> &'static str {
        "depthling-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, o, _, r) = self.sizes();
        let p = self.patches;
        let (x, w) = self.operands(
            self.name(),
            (s1, l1, "input", n * c * p.height * p.width),
            (s2, l2, "weight", o * r),
        )?;
        let y = self.forward(x, w)?;
        Ok((
            CpuStorage::F32(y),
            Shape::from((n, o, p.out_height(), p.out_width())),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // only what the graph needs: no weight gradient for a frozen teacher's detached
        // weights, no input gradient for the input image
        let grad = grad.contiguous()?;
        let gx = match x.track_op() {
            true => Some(w.apply_op2(&grad, ConvInputGrad(*self))?),
            false => None,
        };
        let gw = match w.track_op() {
            true => Some(x.apply_op2(&grad, ConvWeightGrad(*self))?),
            false => None,
        };
        Ok((gx, gw))
    }
}

impl CustomOp2 for ConvInputGrad {
    fn name(&self) -> &'static str {
        "depthling-conv2d-input-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let conv = self.0;
        let (n, c, o, l, r) = conv.sizes();
        let (w, g) = conv.operands(
            self.name(),
            (s1, l1, "weight", o * r),
            (s2, l2, "gradient", n * o * l),
        )?;
        let p = conv.patches;
        Ok((
            CpuStorage::F32(conv.input_grad(w, g)?),
            Shape::from((n, c, p.height, p.width)),
        ))
    }
}

impl CustomOp2 for ConvWeightGrad {
    fn name(&self) -> &'static str {
        "depthling-conv2d-weight-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let conv = self.0;
        let (n, c, o, l, _) = conv.sizes();
        let p = conv.patches;
        let (x, g) = conv.operands(
            self.name(),
            (s1, l1, "input", n * c * p.height * p.width),
            (s2, l2, "gradient", n * o * l),
        )?;
        Ok((
            CpuStorage::F32(conv.weight_grad(x, g)?),
            Shape::from((o, c, p.kernel, p.kernel)),
        ))
    }
}

/// Dense 2-D convolution (`groups = 1`) through [`Conv`]: `x` `[N, C, H, W]`, `w` `[O, C, k, k]`,
/// symmetric padding. Same result as `Tensor::conv2d`, with a fast backward.
pub fn conv2d(x: &Tensor, w: &Tensor, padding: usize, stride: usize) -> Result<Tensor> {
    let (n, c, h, wd) = x.dims4()?;
    let (o, ci, k, k2) = w.dims4()?;
    if ci != c || k != k2 {
        candle_core::bail!("conv2d: input has {c} channels, kernel expects {ci} (kernel {k}×{k2})");
    }
    if !x.device().is_cpu() {
        // the custom op is CPU-only; elsewhere candle's own kernels are used
        return x.conv2d(w, padding, stride, 1, 1);
    }
    if h + 2 * padding < k || wd + 2 * padding < k {
        candle_core::bail!("conv2d: a {k}×{k} kernel does not fit a padded {wd}×{h} input");
    }
    let conv = Conv {
        patches: Patches {
            batch: n,
            channels: c,
            height: h,
            width: wd,
            kernel: k,
            stride,
            padding,
        },
        out_channels: o,
    };
    x.contiguous()?.apply_op2(&w.contiguous()?, conv)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use candle_core::{Device, Var};

    pub(crate) fn random(shape: &[usize], seed: u64) -> Tensor {
        let mut rng = crate::rng::Rng::new(seed);
        let n: usize = shape.iter().product();
        Tensor::from_vec(
            (0..n).map(|_| rng.normal()).collect::<Vec<f32>>(),
            shape,
            &Device::Cpu,
        )
        .unwrap()
    }

    pub(crate) fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Forward and both gradients agree with candle's own conv2d on random shapes.
    #[test]
    fn matches_candle_conv2d_forward_and_backward() {
        let cases = [
            (2, 3, 9, 7, 4, 3, 1),
            (1, 5, 8, 8, 6, 3, 2),
            (3, 4, 6, 10, 2, 5, 2),
            (2, 6, 5, 5, 3, 1, 1),
            (1, 2, 7, 6, 3, 5, 1),
            (2, 1, 1, 1, 2, 3, 1),
            // at least PER_IMAGE output positions: a gemm per image, straight into the output
            (2, 3, 20, 16, 4, 3, 1),
            (2, 4, 34, 36, 3, 3, 2),
            (3, 2, 18, 16, 2, 5, 1),
            // at least ROWS_FROM_CHANNELS channels: the weight gradient from channels-last rows
            (1, 16, 18, 16, 4, 3, 1),
            (2, 17, 34, 36, 5, 5, 2),
            // a long product for few output channels: the transposed right side (gemm_abt)
            (1, 3, 40, 40, 2, 3, 1),
            // 1×1 stride 1 on both paths: the image is its own column matrix at 288 positions
            (2, 5, 18, 16, 3, 1, 1),
            (2, 5, 6, 4, 3, 1, 1),
        ];
        for (i, &(n, c, h, w, o, k, s)) in cases.iter().enumerate() {
            let x = Var::from_tensor(&random(&[n, c, h, w], i as u64)).unwrap();
            let wt = Var::from_tensor(&random(&[o, c, k, k], 100 + i as u64)).unwrap();
            let probe = random(
                &[
                    n,
                    o,
                    (h + 2 * (k / 2) - k) / s + 1,
                    (w + 2 * (k / 2) - k) / s + 1,
                ],
                200 + i as u64,
            );
            let fast = conv2d(&x, &wt, k / 2, s).unwrap();
            let slow = x.conv2d(&wt, k / 2, s, 1, 1).unwrap();
            assert_eq!(fast.dims(), slow.dims());
            assert!(max_diff(&fast, &slow) < 1e-4, "case {i}: forward differs");
            let gf = (fast * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let gs = (slow * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for v in [x.as_tensor(), wt.as_tensor()] {
                let d = max_diff(gf.get(v).unwrap(), gs.get(v).unwrap());
                assert!(d < 1e-3, "case {i}: gradient differs by {d}");
            }
        }
    }

    /// `col2im` is the adjoint of `im2col`: ⟨im2col(x), y⟩ = ⟨x, col2im(y)⟩.
    #[test]
    fn col2im_is_the_adjoint_of_im2col() {
        let p = Patches {
            batch: 2,
            channels: 3,
            height: 7,
            width: 5,
            kernel: 3,
            stride: 2,
            padding: 1,
        };
        let x = random(&[2, 3, 7, 5], 1)
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        // a dirty buffer: im2col writes every element, padding included
        let mut cols = vec![f32::NAN; p.rows() * p.batch * p.positions()];
        im2col(p, &x, &mut cols);
        assert!(cols.iter().all(|v| v.is_finite()));
        let y = random(&[cols.len()], 2).to_vec1::<f32>().unwrap();
        let mut back = vec![0f32; x.len()];
        col2im(p, &y, &mut back);
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(u, v)| (u * v) as f64).sum::<f64>();
        let (lhs, rhs) = (dot(&cols, &y), dot(&x, &back));
        assert!(
            (lhs - rhs).abs() < 1e-3 * lhs.abs().max(1.0),
            "{lhs} vs {rhs}"
        );
    }

    /// Central finite differences on tiny convolutions, including a 5×5 kernel with stride 2 on a
    /// 2×3 image (where candle's own conv2d backward returns a gradient of the wrong shape).
    #[test]
    fn gradient_matches_finite_differences() {
        for (h, w_, k, s) in [(4usize, 4usize, 3usize, 2usize), (2, 3, 5, 2), (3, 5, 1, 1)] {
            let x0 = random(&[1, 2, h, w_], 7);
            let w = random(&[2, 2, k, k], 8);
            let x = Var::from_tensor(&x0).unwrap();
            let g = conv2d(&x, &w, k / 2, s)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let analytic = g
                .get(x.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let base = x0.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let f = |v: &[f32]| {
                let t = Tensor::from_vec(v.to_vec(), (1, 2, h, w_), &Device::Cpu).unwrap();
                conv2d(&t, &w, k / 2, s)
                    .unwrap()
                    .sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap() as f64
            };
            let eps = 1e-2f32;
            for i in 0..base.len() {
                let (mut a, mut b) = (base.clone(), base.clone());
                a[i] += eps;
                b[i] -= eps;
                let numeric = (f(&a) - f(&b)) / (2.0 * eps as f64);
                assert!(
                    (numeric - analytic[i] as f64).abs() < 2e-2 * numeric.abs().max(1.0),
                    "{h}x{w_} k{k} s{s}, x[{i}]: {numeric} vs {}",
                    analytic[i]
                );
            }
        }
    }
}
