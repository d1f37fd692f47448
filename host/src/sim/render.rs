//! Analytic ray casting of planes, boxes, spheres and vertical cylinders; procedural textures;
//! Lambert shading with point lights, ambient light and hard shadows; 2×2 supersampling.

use super::math::{v3, V3};
use crate::rng::Rng;

#[derive(Clone, Copy, Debug)]
pub enum Shape {
    /// Infinite plane `n · p = d`.
    Plane {
        normal: V3,
        d: f32,
    },
    /// Box rotated by `yaw` about the vertical axis through `center`.
    Box {
        center: V3,
        half: V3,
        yaw: f32,
    },
    Sphere {
        center: V3,
        radius: f32,
    },
    /// Vertical capped cylinder standing on `base`.
    Cylinder {
        base: V3,
        radius: f32,
        height: f32,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Texture {
    Flat,
    Checker,
    Wood,
    Tiles,
    Fabric,
    Noise,
    Painted,
}

pub const TEXTURES: [Texture; 7] = [
    Texture::Flat,
    Texture::Checker,
    Texture::Wood,
    Texture::Tiles,
    Texture::Fabric,
    Texture::Noise,
    Texture::Painted,
];

#[derive(Clone, Copy, Debug)]
pub struct Material {
    pub albedo: V3,
    pub texture: Texture,
    /// Texture features per metre.
    pub frequency: f32,
    /// Second colour for two-tone textures.
    pub accent: V3,
}

#[derive(Clone, Copy, Debug)]
pub struct Object {
    pub shape: Shape,
    pub material: Material,
    /// Instance id written to the mask (0 = background/structure).
    pub instance: u16,
}

#[derive(Clone, Copy, Debug)]
pub struct Light {
    pub position: V3,
    pub intensity: f32,
}

#[derive(Clone, Debug)]
pub struct Scene {
    pub objects: Vec<Object>,
    pub lights: Vec<Light>,
    pub ambient: f32,
    /// Colour seen where no object is hit (depth invalid); `None` means black.
    pub sky: Option<V3>,
    /// Hits beyond this distance count as invalid depth (outdoor horizon).
    pub max_depth: f32,
}

/// Pinhole camera: position and an orthonormal basis (right, down, forward).
#[derive(Clone, Copy, Debug)]
pub struct Camera {
    pub position: V3,
    pub right: V3,
    pub down: V3,
    pub forward: V3,
    pub fx: f32,
    pub fy: f32,
    pub cx: f32,
    pub cy: f32,
    pub width: usize,
    pub height: usize,
}

impl Camera {
    /// A camera at `position` looking along yaw (about +y), pitch (positive up) and roll.
    #[allow(clippy::too_many_arguments)]
    pub fn looking(
        position: V3,
        yaw: f32,
        pitch: f32,
        roll: f32,
        width: usize,
        height: usize,
        focal_fraction: f32,
    ) -> Camera {
        let forward = v3(
            yaw.sin() * pitch.cos(),
            pitch.sin(),
            yaw.cos() * pitch.cos(),
        )
        .normalized();
        let world_up = v3(0.0, 1.0, 0.0);
        let right0 = world_up.cross(forward).normalized();
        let up0 = forward.cross(right0).normalized();
        let (s, c) = roll.sin_cos();
        let right = right0 * c + up0 * s;
        let up = up0 * c - right0 * s;
        let f = focal_fraction * width as f32;
        Camera {
            position,
            right,
            down: -up,
            forward,
            fx: f,
            fy: f,
            cx: width as f32 / 2.0,
            cy: height as f32 / 2.0,
            width,
            height,
        }
    }

    /// The same camera moved `baseline` metres to its right (the right view of a stereo pair).
    pub fn shifted_right(&self, baseline: f32) -> Camera {
        Camera {
            position: self.position + self.right * baseline,
            ..*self
        }
    }

    fn ray(&self, px: f32, py: f32) -> V3 {
        let x = (px - self.cx) / self.fx;
        let y = (py - self.cy) / self.fy;
        (self.forward + self.right * x + self.down * y).normalized()
    }
}

pub struct Hit {
    pub t: f32,
    pub normal: V3,
    pub object: usize,
}

const EPS: f32 = 1e-4;

/// Rotation about +y by the angle whose sine and cosine are given.
fn rotate_y(p: V3, (s, c): (f32, f32)) -> V3 {
    v3(c * p.x + s * p.z, p.y, -s * p.x + c * p.z)
}

/// Per-object data computed once per image: a bounding sphere (for a cheap reject) and the
/// box rotation.
#[derive(Clone, Copy, Debug)]
struct Prepared {
    /// Centre and squared radius; `None` for unbounded planes.
    bound: Option<(V3, f32)>,
    yaw: (f32, f32),
}

fn prepare(shape: &Shape) -> Prepared {
    match *shape {
        Shape::Plane { .. } => Prepared {
            bound: None,
            yaw: (0.0, 1.0),
        },
        Shape::Sphere { center, radius } => Prepared {
            bound: Some((center, radius * radius * 1.0001)),
            yaw: (0.0, 1.0),
        },
        Shape::Box { center, half, yaw } => Prepared {
            bound: Some((center, half.dot(half) * 1.0001)),
            yaw: yaw.sin_cos(),
        },
        Shape::Cylinder {
            base,
            radius,
            height,
        } => {
            let h = height / 2.0;
            Prepared {
                bound: Some((base + v3(0.0, h, 0.0), (radius * radius + h * h) * 1.0001)),
                yaw: (0.0, 1.0),
            }
        }
    }
}

/// Whether the ray can touch the bounding sphere beyond the origin.
#[inline]
fn may_hit(bound: Option<(V3, f32)>, o: V3, d: V3) -> bool {
    let Some((c, r2)) = bound else { return true };
    let oc = o - c;
    let b = oc.dot(d);
    let c2 = oc.dot(oc) - r2;
    !(c2 > 0.0 && b > 0.0) && b * b - c2 >= 0.0
}

/// Nearest intersection of a ray with a shape beyond `EPS`.
fn intersect(shape: &Shape, pre: &Prepared, o: V3, d: V3) -> Option<(f32, V3)> {
    if !may_hit(pre.bound, o, d) {
        return None;
    }
    match *shape {
        Shape::Plane { normal, d: off } => {
            let den = normal.dot(d);
            if den.abs() < 1e-9 {
                return None;
            }
            let t = (off - normal.dot(o)) / den;
            (t > EPS).then(|| (t, if den < 0.0 { normal } else { -normal }))
        }
        Shape::Sphere { center, radius } => {
            let oc = o - center;
            let b = oc.dot(d);
            let c = oc.dot(oc) - radius * radius;
            let disc = b * b - c;
            if disc < 0.0 {
                return None;
            }
            let s = disc.sqrt();
            let t = if -b - s > EPS { -b - s } else { -b + s };
            (t > EPS).then(|| (t, ((o + d * t) - center).normalized()))
        }
        Shape::Box { center, half, .. } => {
            // into the box frame
            let inverse = (-pre.yaw.0, pre.yaw.1);
            let lo = rotate_y(o - center, inverse);
            let ld = rotate_y(d, inverse);
            let mut tmin = f32::NEG_INFINITY;
            let mut tmax = f32::INFINITY;
            let mut axis_min = 0;
            let mut axis_max = 0;
            for (axis, (p, dir, h)) in [
                (lo.x, ld.x, half.x),
                (lo.y, ld.y, half.y),
                (lo.z, ld.z, half.z),
            ]
            .into_iter()
            .enumerate()
            {
                if dir.abs() < 1e-12 {
                    if p.abs() > h {
                        return None;
                    }
                    continue;
                }
                let inv = 1.0 / dir;
                let (t0, t1) = {
                    let a = (-h - p) * inv;
                    let b = (h - p) * inv;
                    if a < b {
                        (a, b)
                    } else {
                        (b, a)
                    }
                };
                if t0 > tmin {
                    tmin = t0;
                    axis_min = axis;
                }
                if t1 < tmax {
                    tmax = t1;
                    axis_max = axis;
                }
                if tmin > tmax {
                    return None;
                }
            }
            let (t, axis, inside) = if tmin > EPS {
                (tmin, axis_min, false)
            } else if tmax > EPS {
                (tmax, axis_max, true)
            } else {
                return None;
            };
            let p = lo + ld * t;
            let comp = [p.x, p.y, p.z][axis];
            let sign = if (comp >= 0.0) ^ inside { 1.0 } else { -1.0 };
            let mut n = [0.0f32; 3];
            n[axis] = sign;
            Some((t, rotate_y(v3(n[0], n[1], n[2]), pre.yaw)))
        }
        Shape::Cylinder {
            base,
            radius,
            height,
        } => {
            let mut best: Option<(f32, V3)> = None;
            let lo = o - base;
            // side
            let a = d.x * d.x + d.z * d.z;
            if a > 1e-12 {
                let b = lo.x * d.x + lo.z * d.z;
                let c = lo.x * lo.x + lo.z * lo.z - radius * radius;
                let disc = b * b - a * c;
                if disc >= 0.0 {
                    let s = disc.sqrt();
                    for t in [(-b - s) / a, (-b + s) / a] {
                        let y = lo.y + d.y * t;
                        if t > EPS && (0.0..=height).contains(&y) {
                            let p = lo + d * t;
                            best = Some((t, v3(p.x, 0.0, p.z).normalized()));
                            break;
                        }
                    }
                }
            }
            // caps
            if d.y.abs() > 1e-12 {
                for (cap_y, n) in [(0.0, v3(0.0, -1.0, 0.0)), (height, v3(0.0, 1.0, 0.0))] {
                    let t = (cap_y - lo.y) / d.y;
                    if t > EPS && best.is_none_or(|(bt, _)| t < bt) {
                        let p = lo + d * t;
                        if p.x * p.x + p.z * p.z <= radius * radius {
                            best = Some((t, n));
                        }
                    }
                }
            }
            best
        }
    }
}

/// Side of the screen tiles that bin objects for primary rays.
const TILE: usize = 8;

/// At most this many lights per scene.
pub const MAX_LIGHTS: usize = 8;

/// A scene ready for tracing.
struct Tracer<'a> {
    scene: &'a Scene,
    pre: Vec<Prepared>,
    /// Objects without a bound (planes), tested by every shadow ray.
    unbounded: Vec<usize>,
    /// Bounded objects as (index, centre x, y, z, squared radius), for the shadow-ray cull.
    bounded: Vec<(usize, [f32; 4])>,
}

/// Per-light index of the object that last blocked it: neighbouring shadow rays are usually
/// blocked by the same object, so it is tested first.
type ShadowHints = [usize; MAX_LIGHTS];

const NO_HINT: usize = usize::MAX;

impl<'a> Tracer<'a> {
    fn new(scene: &'a Scene) -> Self {
        let pre: Vec<Prepared> = scene.objects.iter().map(|o| prepare(&o.shape)).collect();
        let mut unbounded = Vec::new();
        let mut bounded = Vec::new();
        for (i, p) in pre.iter().enumerate() {
            match p.bound {
                None => unbounded.push(i),
                Some((c, r2)) => bounded.push((i, [c.x, c.y, c.z, r2])),
            }
        }
        Tracer {
            scene,
            pre,
            unbounded,
            bounded,
        }
    }

    /// Nearest hit among the objects `candidates` (indices into the scene).
    fn trace(&self, o: V3, d: V3, candidates: &[u16]) -> Option<Hit> {
        let mut best: Option<Hit> = None;
        for &i in candidates {
            let i = i as usize;
            if let Some((t, n)) = intersect(&self.scene.objects[i].shape, &self.pre[i], o, d) {
                if best.as_ref().is_none_or(|b| t < b.t) {
                    best = Some(Hit {
                        t,
                        normal: n,
                        object: i,
                    });
                }
            }
        }
        best
    }

    /// For each `TILE`×`TILE` block of pixels, the objects a camera ray through it can hit:
    /// unbounded shapes always, bounded ones where the projection of their bounding sphere's
    /// bounding cube (all corners in front of the camera, else everywhere) overlaps the tile.
    ///
    /// Planes are culled too: the first plane a camera ray crosses is the exit face of the convex
    /// cell (intersection of half-spaces) that holds the camera, and the directions leaving
    /// through one face form a convex cone. So where the rays through a tile's four corners all
    /// meet the same plane first, every ray through the tile does, and the other planes are
    /// dropped from its list (a room's six walls become one).
    fn tile_lists(&self, cam: &Camera) -> Vec<Vec<u16>> {
        let (tx, ty) = (cam.width.div_ceil(TILE), cam.height.div_ceil(TILE));
        let mut tiles = vec![Vec::new(); tx * ty];
        let first_plane = |px: usize, py: usize| {
            let d = cam.ray(px as f32, py as f32);
            let mut best: Option<(f32, usize)> = None;
            for &i in &self.unbounded {
                if let Some((t, _)) =
                    intersect(&self.scene.objects[i].shape, &self.pre[i], cam.position, d)
                {
                    if best.is_none_or(|(bt, _)| t < bt) {
                        best = Some((t, i));
                    }
                }
            }
            best.map(|(_, i)| i)
        };
        let corners: Vec<Option<usize>> = (0..=ty)
            .flat_map(|t_y| (0..=tx).map(move |t_x| (t_x, t_y)))
            .map(|(t_x, t_y)| {
                first_plane((t_x * TILE).min(cam.width), (t_y * TILE).min(cam.height))
            })
            .collect();
        let tile_plane = |t_x: usize, t_y: usize| {
            let at = |dx: usize, dy: usize| corners[(t_y + dy) * (tx + 1) + t_x + dx];
            let first = at(0, 0)?;
            [at(1, 0), at(0, 1), at(1, 1)]
                .iter()
                .all(|&c| c == Some(first))
                .then_some(first)
        };
        for (i, pre) in self.pre.iter().enumerate() {
            let rect = pre.bound.and_then(|(c, r2)| {
                let r = r2.sqrt();
                let (mut x0, mut y0, mut x1, mut y1) = (
                    f32::INFINITY,
                    f32::INFINITY,
                    f32::NEG_INFINITY,
                    f32::NEG_INFINITY,
                );
                for corner in 0..8 {
                    let off = v3(
                        if corner & 1 == 0 { -r } else { r },
                        if corner & 2 == 0 { -r } else { r },
                        if corner & 4 == 0 { -r } else { r },
                    );
                    let p = c + off - cam.position;
                    let z = p.dot(cam.forward);
                    if z <= 1e-3 {
                        return None;
                    }
                    let u = cam.cx + cam.fx * p.dot(cam.right) / z;
                    let v = cam.cy + cam.fy * p.dot(cam.down) / z;
                    (x0, y0, x1, y1) = (x0.min(u), y0.min(v), x1.max(u), y1.max(v));
                }
                Some((x0 - 1.0, y0 - 1.0, x1 + 1.0, y1 + 1.0))
            });
            for t_y in 0..ty {
                for t_x in 0..tx {
                    let inside = match rect {
                        None if pre.bound.is_none() => {
                            tile_plane(t_x, t_y).is_none_or(|plane| plane == i)
                        }
                        None => true,
                        Some((x0, y0, x1, y1)) => {
                            let (a0, b0) = ((t_x * TILE) as f32, (t_y * TILE) as f32);
                            x1 >= a0 && x0 <= a0 + TILE as f32 && y1 >= b0 && y0 <= b0 + TILE as f32
                        }
                    };
                    if inside {
                        tiles[t_y * tx + t_x].push(i as u16);
                    }
                }
            }
        }
        tiles
    }

    fn blocks(&self, i: usize, o: V3, d: V3, dist: f32) -> bool {
        intersect(&self.scene.objects[i].shape, &self.pre[i], o, d)
            .is_some_and(|(t, _)| t < dist - 1e-3)
    }

    /// The object between `o` and `o + d·dist`, if any (`hint` is tried first).
    fn occluder(&self, o: V3, d: V3, dist: f32, hint: usize) -> Option<usize> {
        if hint != NO_HINT && self.blocks(hint, o, d, dist) {
            return Some(hint);
        }
        if let Some(&i) = self.unbounded.iter().find(|&&i| self.blocks(i, o, d, dist)) {
            return Some(i);
        }
        for &(i, [cx, cy, cz, r2]) in &self.bounded {
            // the segment must pass through the bounding sphere
            let oc = v3(o.x - cx, o.y - cy, o.z - cz);
            let b = oc.dot(d);
            let c2 = oc.dot(oc) - r2;
            let outside = c2 > 0.0;
            if outside && (b > 0.0 || b * b < c2 || -b - dist > (b * b - c2).sqrt()) {
                continue;
            }
            if i != hint && self.blocks(i, o, d, dist) {
                return Some(i);
            }
        }
        None
    }

    /// Which lights the point `p` with normal `n` sees.
    fn visibility(&self, p: V3, n: V3, hints: &mut ShadowHints) -> [bool; MAX_LIGHTS] {
        let mut vis = [false; MAX_LIGHTS];
        let origin = p + n * 2e-3;
        for ((v, l), hint) in vis.iter_mut().zip(&self.scene.lights).zip(hints.iter_mut()) {
            let to = l.position - p;
            let dist = to.length();
            let dir = to * (1.0 / dist.max(1e-6));
            if n.dot(dir) <= 0.0 {
                continue;
            }
            match self.occluder(origin, dir, dist, *hint) {
                Some(i) => *hint = i,
                None => *v = true,
            }
        }
        vis
    }

    /// Linear radiance of a hit, given the lights it sees.
    fn radiance(&self, o: V3, d: V3, hit: &Hit, vis: &[bool; MAX_LIGHTS]) -> V3 {
        let obj = &self.scene.objects[hit.object];
        let p = o + d * hit.t;
        let albedo = texture(&obj.material, p, hit.normal);
        let mut light = self.scene.ambient;
        for (l, &seen) in self.scene.lights.iter().zip(vis) {
            if !seen {
                continue;
            }
            let to = l.position - p;
            let dist = to.length();
            let cos = hit.normal.dot(to * (1.0 / dist.max(1e-6)));
            if cos > 0.0 {
                light += l.intensity * cos / (1.0 + 0.05 * dist * dist);
            }
        }
        albedo * light
    }
}

fn hash3(x: i32, y: i32, z: i32) -> f32 {
    hash_finish(
        (x as u32).wrapping_mul(HX) ^ (y as u32).wrapping_mul(HY) ^ (z as u32).wrapping_mul(HZ),
    )
}

const HX: u32 = 0x8DA6_B343;
const HY: u32 = 0xD816_3841;
const HZ: u32 = 0xCB1A_B31F;

#[inline]
fn hash_finish(mut h: u32) -> f32 {
    h ^= h >> 13;
    h = h.wrapping_mul(0x5bd1_e995);
    h ^= h >> 15;
    (h & 0xFFFF) as f32 / 65535.0
}

/// `x.floor()` as an integer, without the libm call `f32::floor` becomes on baseline x86-64
/// (exact for |x| < 2³¹, far beyond any scene coordinate times texture frequency).
#[inline]
fn floor_i(x: f32) -> i32 {
    let t = x as i32;
    t - (x < t as f32) as i32
}

/// Trilinear value noise in [0, 1] (`hash3` at the eight lattice corners; the per-axis products
/// of the hash are formed once, since `(i + 1)·k = i·k + k` in wrapping arithmetic).
pub fn value_noise(p: V3) -> f32 {
    let (ix, iy, iz) = (floor_i(p.x), floor_i(p.y), floor_i(p.z));
    let s = |t: f32| t * t * (3.0 - 2.0 * t);
    let (tx, ty, tz) = (s(p.x - ix as f32), s(p.y - iy as f32), s(p.z - iz as f32));
    let lerp = |a: f32, b: f32, t: f32| a + (b - a) * t;
    let hx = (ix as u32).wrapping_mul(HX);
    let hy = (iy as u32).wrapping_mul(HY);
    let hz = (iz as u32).wrapping_mul(HZ);
    let xs = [hx, hx.wrapping_add(HX)];
    let ys = [hy, hy.wrapping_add(HY)];
    let zs = [hz, hz.wrapping_add(HZ)];
    let corner = |i: usize| hash_finish(xs[i & 1] ^ ys[(i >> 1) & 1] ^ zs[i >> 2]);
    let x00 = lerp(corner(0), corner(1), tx);
    let x10 = lerp(corner(2), corner(3), tx);
    let x01 = lerp(corner(4), corner(5), tx);
    let x11 = lerp(corner(6), corner(7), tx);
    lerp(lerp(x00, x10, ty), lerp(x01, x11, ty), tz)
}

/// 2-D texture coordinates on the plane most facing the normal.
fn uv(p: V3, n: V3) -> (f32, f32) {
    let (ax, ay, az) = (n.x.abs(), n.y.abs(), n.z.abs());
    if ay >= ax && ay >= az {
        (p.x, p.z)
    } else if ax >= az {
        (p.z, p.y)
    } else {
        (p.x, p.y)
    }
}

fn texture(m: &Material, p: V3, n: V3) -> V3 {
    let f = m.frequency;
    let (u, v) = uv(p, n);
    let (u, v) = (u * f, v * f);
    let mix = |t: f32| m.albedo * (1.0 - t) + m.accent * t;
    match m.texture {
        Texture::Flat => m.albedo,
        Texture::Checker => {
            let c = ((floor_i(u) + floor_i(v)) & 1) as f32;
            mix(c)
        }
        Texture::Wood => {
            let grain = value_noise(v3(u * 0.5, v * 8.0, 0.0));
            let rings = ((u + 2.0 * grain) * 3.0).sin() * 0.5 + 0.5;
            mix(0.6 * rings)
        }
        Texture::Tiles => {
            let (iu, iv) = (floor_i(u), floor_i(v));
            let (fu, fv) = (u - iu as f32, v - iv as f32);
            let grout = fu < 0.06 || fv < 0.06;
            if grout {
                m.accent * 0.6
            } else {
                m.albedo * (0.9 + 0.1 * hash3(iu, iv, 7))
            }
        }
        Texture::Fabric => {
            let weave = ((u * 12.0).sin() * (v * 12.0).sin()) * 0.5 + 0.5;
            m.albedo * (0.8 + 0.2 * weave)
        }
        Texture::Noise => {
            let t = value_noise(p * f) * 0.6 + value_noise(p * (3.0 * f)) * 0.4;
            mix(t)
        }
        Texture::Painted => m.albedo * (0.93 + 0.07 * value_noise(p * (4.0 * f))),
    }
}

/// Display gamma `v^(1/2.2)` by table lookup with linear interpolation (a `powf` per channel was
/// a tenth of the render time).
struct Gamma {
    table: [f32; Gamma::N + 2],
}

impl Gamma {
    const N: usize = 1024;
    /// Inputs above this saturate anyway after exposure.
    const MAX: f32 = 2.0;

    fn new() -> Self {
        let mut table = [0f32; Self::N + 2];
        for (i, t) in table.iter_mut().enumerate() {
            *t = (i as f32 * Self::MAX / Self::N as f32).powf(1.0 / 2.2);
        }
        Gamma { table }
    }

    #[inline]
    fn apply(&self, v: f32) -> f32 {
        let x = v.clamp(0.0, Self::MAX) * (Self::N as f32 / Self::MAX);
        let i = x as usize;
        let f = x - i as f32;
        self.table[i] + (self.table[i + 1] - self.table[i]) * f
    }
}

/// Camera-space exposure and sensor model.
#[derive(Clone, Copy, Debug)]
pub struct Sensor {
    pub exposure: f32,
    pub noise_sigma: f32,
}

/// One rendered view.
pub struct View {
    pub rgb: Vec<u8>,
    /// z-depth in metres, 0 = invalid.
    pub depth: Vec<f32>,
    pub instance: Vec<u16>,
}

/// Renders a view: RGB from 2×2 supersampling, depth and instance from the pixel centre.
///
/// The supersampling is adaptive. A first pass traces every pixel centre. Where the centre and
/// its eight neighbours' centres all see the same object (or all see sky), the four subsample
/// rays, which lie inside the square those centres span, are intersected with that object alone
/// instead of every candidate; pixels on silhouettes trace each subsample against all
/// candidates. Only detail narrower than a pixel gap that every surrounding centre misses is lost.
pub fn render(scene: &Scene, cam: &Camera, sensor: Sensor, rng: &mut Rng) -> View {
    let (w, h) = (cam.width, cam.height);
    let mut rgb = vec![0u8; w * h * 3];
    let mut depth = vec![0.0f32; w * h];
    let mut instance = vec![0u16; w * h];
    const SUB: [(f32, f32); 4] = [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)];
    let tracer = Tracer::new(scene);
    let gamma = Gamma::new();
    let sky = scene.sky.unwrap_or_default();
    let tiles = tracer.tile_lists(cam);
    let tiles_x = w.div_ceil(TILE);
    let candidates_at = |x: usize, y: usize| &tiles[(y / TILE) * tiles_x + x / TILE][..];

    // Pass 1: pixel centres give depth, instance, the object each centre sees and the point hit.
    let mut centres: Vec<Option<(Hit, V3)>> = Vec::with_capacity(w * h);
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            let d = cam.ray(x as f32 + 0.5, y as f32 + 0.5);
            let centre = tracer.trace(cam.position, d, candidates_at(x, y));
            if let Some(hit) = &centre {
                let z = hit.t * d.dot(cam.forward);
                if z <= scene.max_depth {
                    depth[i] = z;
                    instance[i] = scene.objects[hit.object].instance;
                }
            }
            centres.push(centre.map(|hit| {
                let p = cam.position + d * hit.t;
                (hit, p)
            }));
        }
    }
    let seen = |i: usize| centres[i].as_ref().map(|(hit, _)| hit.object);
    let mut hints: ShadowHints = [NO_HINT; MAX_LIGHTS];

    // Pass 2: shading with 2×2 subsamples.
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            let object = seen(i);
            let uniform = (y.saturating_sub(1)..(y + 2).min(h)).all(|ny| {
                (x.saturating_sub(1)..(x + 2).min(w)).all(|nx| seen(ny * w + nx) == object)
            });
            let candidates = candidates_at(x, y);
            // Shadows are computed once per pixel at the centre hit and shared by subsamples
            // that land on the same object; subsamples on another object (edges) get their own.
            let centre_vis = centres[i]
                .as_ref()
                .map(|(hit, p)| (hit.object, tracer.visibility(*p, hit.normal, &mut hints)));
            let mut c = V3::default();
            for (sx, sy) in SUB {
                let dir = cam.ray(x as f32 + sx, y as f32 + sy);
                let hit = match (uniform, object) {
                    (true, None) => None,
                    (true, Some(o)) => tracer
                        .trace(cam.position, dir, &[o as u16])
                        .or_else(|| tracer.trace(cam.position, dir, candidates)),
                    (false, _) => tracer.trace(cam.position, dir, candidates),
                };
                c = c + match hit {
                    None => sky,
                    Some(hit) => {
                        let vis = match centre_vis {
                            Some((object, v)) if object == hit.object => v,
                            _ => tracer.visibility(
                                cam.position + dir * hit.t,
                                hit.normal,
                                &mut hints,
                            ),
                        };
                        tracer.radiance(cam.position, dir, &hit, &vis)
                    }
                };
            }
            let c = c * (0.25 * sensor.exposure);
            for (k, v) in [c.x, c.y, c.z].into_iter().enumerate() {
                // gamma, then sensor noise in display space
                let g = gamma.apply(v) + sensor.noise_sigma * rng.approx_normal();
                // (+0.5 then truncation: round-half-up, which `f32::round` matches for v ≥ 0)
                rgb[i * 3 + k] = (g * 255.0 + 0.5).clamp(0.0, 255.0) as u8;
            }
        }
    }
    View {
        rgb,
        depth,
        instance,
    }
}
