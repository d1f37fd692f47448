//! The simulator (DESIGN §4): procedural scenes of three domains rendered by analytic ray casting.
//! Deterministic: the same domain, size, seed and index give identical bytes.

pub mod math;
pub mod render;

use math::{v3, V3};
use render::{Camera, Light, Material, Object, Scene, Sensor, Shape, Texture, TEXTURES};

use crate::data::{Manifest, Sample, DATASET_FORMAT, DATASET_VERSION};
use crate::rng::Rng;

/// Scene families.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Domain {
    /// Rooms with furniture: the target domain (a stand-in for NYUv2).
    Indoor,
    /// Rooms in another style: larger, brightly painted, seen from a low robot-height camera,
    /// more furniture. A related domain of its own: the LW paper's auxiliary data U.
    IndoorAlt,
    /// Streets: road, sidewalks, buildings, cars, poles, trees; sky is invalid depth.
    Outdoor,
    /// Random primitives in random layouts: the out-of-distribution source for data-free KD.
    Ood,
}

impl std::str::FromStr for Domain {
    type Err = crate::error::Error;

    fn from_str(s: &str) -> crate::error::Result<Domain> {
        Domain::parse(s).ok_or_else(|| {
            crate::error::Error::Usage(format!(
                "unknown domain {s:?}; known: indoor, indoor-alt, outdoor, ood"
            ))
        })
    }
}

impl Domain {
    pub fn parse(s: &str) -> Option<Domain> {
        match s {
            "indoor" => Some(Domain::Indoor),
            "indoor-alt" => Some(Domain::IndoorAlt),
            "outdoor" => Some(Domain::Outdoor),
            "ood" => Some(Domain::Ood),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Domain::Indoor => "indoor",
            Domain::IndoorAlt => "indoor-alt",
            Domain::Outdoor => "outdoor",
            Domain::Ood => "ood",
        }
    }

    /// Stereo baseline in metres. Outdoor: 1.5 m, a long-baseline rig rather than KITTI's 0.54 m,
    /// so that at the boards' 128 px width (focal 74 px) near and mid-range pixels have several
    /// pixels of disparity, 74·B/Z: 11 px at 10 m, 5.6 px at 20 m, 2.8 px at 40 m (KITTI's
    /// baseline there gives 2 px at 20 m, too little for a stereo teacher to pass anything on).
    pub fn baseline(self) -> f32 {
        match self {
            Domain::Outdoor => 1.5,
            _ => 0.1,
        }
    }

    /// Largest depth the domain produces (also the cap used when storing PNGs).
    pub fn max_depth(self) -> f32 {
        match self {
            Domain::Outdoor => 80.0,
            _ => 10.0,
        }
    }

    /// Focal length as a fraction of the image width.
    pub fn focal_fraction(self) -> f32 {
        match self {
            // NYUv2: 518.8 px at 640 px wide
            Domain::Indoor | Domain::IndoorAlt | Domain::Ood => 0.81,
            // KITTI: ~721 px at 1242 px wide
            Domain::Outdoor => 0.58,
        }
    }
}

fn colour(rng: &mut Rng, saturated: bool) -> V3 {
    if saturated {
        v3(rng.f32(), rng.f32(), rng.f32())
    } else {
        // muted, realistic interior colours around a base tone
        let base = rng.range(0.35, 0.85);
        v3(
            base * rng.range(0.8, 1.1),
            base * rng.range(0.75, 1.0),
            base * rng.range(0.6, 0.95),
        )
    }
}

fn material(rng: &mut Rng, texture: Texture, saturated: bool) -> Material {
    let albedo = colour(rng, saturated);
    Material {
        albedo,
        texture,
        frequency: rng.range(1.0, 5.0),
        accent: albedo * rng.range(0.3, 0.7),
    }
}

fn boxed(center: V3, half: V3, yaw: f32, material: Material, instance: u16) -> Object {
    Object {
        shape: Shape::Box { center, half, yaw },
        material,
        instance,
    }
}

/// What distinguishes the two indoor domains.
struct RoomStyle {
    /// Room width and depth range, metres.
    size: (f32, f32),
    /// Saturated (painted, colourful) wall colours instead of muted ones.
    saturated_walls: bool,
    /// Camera height range, metres.
    camera: (f32, f32),
    furniture: (usize, usize),
    ambient: (f32, f32),
}

const ROOM: RoomStyle = RoomStyle {
    size: (3.0, 8.0),
    saturated_walls: false,
    camera: (1.0, 1.8),
    furniture: (3, 8),
    ambient: (0.25, 0.4),
};

const ROOM_ALT: RoomStyle = RoomStyle {
    size: (4.0, 9.0),
    saturated_walls: true,
    camera: (0.5, 1.1),
    furniture: (5, 11),
    ambient: (0.35, 0.5),
};

/// A room: floor, ceiling and four walls as planes, furniture from boxes and cylinders.
fn indoor(rng: &mut Rng, width: usize, height: usize, style: &RoomStyle) -> (Scene, Camera) {
    let (rw, rd, rh) = (
        rng.range(style.size.0, style.size.1),
        rng.range(style.size.0, style.size.1),
        rng.range(2.4, 3.2),
    );
    let mut objects = Vec::new();
    let floor_tex = *rng.pick(&[
        Texture::Wood,
        Texture::Tiles,
        Texture::Checker,
        Texture::Fabric,
    ]);
    let wall = material(rng, Texture::Painted, style.saturated_walls);
    let plane = |normal: V3, d: f32, m: Material| Object {
        shape: Shape::Plane { normal, d },
        material: m,
        instance: 0,
    };
    objects.push(plane(
        v3(0.0, 1.0, 0.0),
        0.0,
        material(rng, floor_tex, false),
    ));
    objects.push(plane(
        v3(0.0, 1.0, 0.0),
        rh,
        material(rng, Texture::Painted, false),
    ));
    let side_wall = if rng.chance(0.3) {
        material(rng, Texture::Painted, style.saturated_walls)
    } else {
        wall
    };
    objects.push(plane(v3(1.0, 0.0, 0.0), 0.0, side_wall));
    objects.push(plane(v3(1.0, 0.0, 0.0), rw, side_wall));
    objects.push(plane(v3(0.0, 0.0, 1.0), 0.0, wall));
    objects.push(plane(v3(0.0, 0.0, 1.0), rd, wall));

    let cam_pos = v3(
        rng.range(0.3, 0.7) * rw,
        rng.range(style.camera.0, style.camera.1),
        rng.range(0.15, 0.5),
    );
    let furniture = rng.int(style.furniture.0, style.furniture.1) as u16;
    for instance in 1..=furniture {
        let kind = rng.int(0, 5);
        let against_wall = rng.chance(0.5);
        let x = rng.range(0.4, rw - 0.4);
        let z = if against_wall {
            rd - rng.range(0.3, 0.6)
        } else {
            rng.range(cam_pos.z + 1.0, rd - 0.4).max(cam_pos.z + 0.8)
        };
        let yaw = if against_wall {
            0.0
        } else {
            rng.range(-0.6, 0.6)
        };
        let tex = *rng.pick(&[
            Texture::Wood,
            Texture::Fabric,
            Texture::Painted,
            Texture::Noise,
        ]);
        let m = material(rng, tex, false);
        match kind {
            // table: top and four legs
            0 => {
                let (hw, hd, top) = (
                    rng.range(0.4, 0.9),
                    rng.range(0.3, 0.6),
                    rng.range(0.7, 0.8),
                );
                objects.push(boxed(v3(x, top, z), v3(hw, 0.03, hd), yaw, m, instance));
                for (sx, sz) in [(-1.0, -1.0), (1.0, -1.0), (-1.0, 1.0), (1.0, 1.0)] {
                    let off = math_rot(v3(sx * (hw - 0.05), 0.0, sz * (hd - 0.05)), yaw);
                    objects.push(boxed(
                        v3(x, top / 2.0, z) + off,
                        v3(0.03, top / 2.0, 0.03),
                        yaw,
                        m,
                        instance,
                    ));
                }
            }
            // bed
            1 => {
                let (hw, hd) = (rng.range(0.5, 0.9), rng.range(0.9, 1.1));
                objects.push(boxed(
                    v3(x, 0.25, z),
                    v3(hw, 0.25, hd),
                    yaw,
                    material(rng, Texture::Fabric, false),
                    instance,
                ));
                objects.push(boxed(
                    v3(x, 0.5, z) + math_rot(v3(0.0, 0.0, hd), yaw),
                    v3(hw, 0.5, 0.05),
                    yaw,
                    m,
                    instance,
                ));
            }
            // shelf / wardrobe
            2 => {
                let (hw, hh) = (rng.range(0.3, 0.8), rng.range(0.6, 1.1));
                objects.push(boxed(
                    v3(x, hh, z),
                    v3(hw, hh, rng.range(0.15, 0.3)),
                    yaw,
                    m,
                    instance,
                ));
            }
            // sofa: seat and back
            3 => {
                let hw = rng.range(0.6, 1.1);
                let fabric = material(rng, Texture::Fabric, false);
                objects.push(boxed(
                    v3(x, 0.22, z),
                    v3(hw, 0.22, 0.4),
                    yaw,
                    fabric,
                    instance,
                ));
                objects.push(boxed(
                    v3(x, 0.45, z) + math_rot(v3(0.0, 0.0, 0.32), yaw),
                    v3(hw, 0.45, 0.1),
                    yaw,
                    fabric,
                    instance,
                ));
            }
            // cabinet / box
            4 => {
                let half = v3(
                    rng.range(0.2, 0.5),
                    rng.range(0.2, 0.5),
                    rng.range(0.2, 0.4),
                );
                objects.push(boxed(v3(x, half.y, z), half, yaw, m, instance));
            }
            // lamp or stool: cylinder, sometimes with a ball
            _ => {
                let r = rng.range(0.1, 0.3);
                let hgt = rng.range(0.4, 1.5);
                objects.push(Object {
                    shape: Shape::Cylinder {
                        base: v3(x, 0.0, z),
                        radius: r,
                        height: hgt,
                    },
                    material: m,
                    instance,
                });
                if rng.chance(0.5) {
                    objects.push(Object {
                        shape: Shape::Sphere {
                            center: v3(x, hgt + r, z),
                            radius: r * 1.2,
                        },
                        material: material(rng, Texture::Flat, false),
                        instance,
                    });
                }
            }
        }
    }
    let lights = (0..rng.int(1, 3))
        .map(|_| Light {
            position: v3(rng.range(0.5, rw - 0.5), rh - 0.2, rng.range(0.5, rd - 0.5)),
            intensity: rng.range(0.5, 1.0),
        })
        .collect();
    let target_x = rng.range(0.3, 0.7) * rw;
    let yaw = ((target_x - cam_pos.x) / (rd - cam_pos.z)).atan() + rng.range(-0.15, 0.15);
    let pitch = rng.range(-0.35, -0.05);
    let cam = Camera::looking(
        cam_pos,
        yaw,
        pitch,
        rng.range(-0.03, 0.03),
        width,
        height,
        Domain::Indoor.focal_fraction(),
    );
    let scene = Scene {
        objects,
        lights,
        ambient: rng.range(style.ambient.0, style.ambient.1),
        sky: None,
        max_depth: Domain::Indoor.max_depth(),
    };
    (scene, cam)
}

fn math_rot(p: V3, yaw: f32) -> V3 {
    let (s, c) = yaw.sin_cos();
    v3(c * p.x + s * p.z, p.y, -s * p.x + c * p.z)
}

/// A street: road plane, sidewalks, two rows of buildings, cars, poles and trees.
fn outdoor(rng: &mut Rng, width: usize, height: usize) -> (Scene, Camera) {
    let mut objects = Vec::new();
    let road_half = rng.range(3.5, 6.0);
    objects.push(Object {
        shape: Shape::Plane {
            normal: v3(0.0, 1.0, 0.0),
            d: 0.0,
        },
        material: Material {
            albedo: v3(0.3, 0.3, 0.32),
            texture: Texture::Noise,
            frequency: 2.0,
            accent: v3(0.22, 0.22, 0.24),
        },
        instance: 0,
    });
    let walk = material(rng, Texture::Tiles, false);
    for side in [-1.0f32, 1.0] {
        objects.push(boxed(
            v3(side * (road_half + 2.0), 0.075, 60.0),
            v3(2.0, 0.075, 70.0),
            0.0,
            walk,
            0,
        ));
        let mut z = rng.range(-5.0, 5.0);
        while z < 110.0 {
            let len = rng.range(6.0, 20.0);
            let h = rng.range(6.0, 25.0);
            let depth = rng.range(5.0, 12.0);
            let x = side * (road_half + 4.0 + depth);
            let tex = *rng.pick(&[
                Texture::Tiles,
                Texture::Painted,
                Texture::Noise,
                Texture::Checker,
            ]);
            objects.push(boxed(
                v3(x, h / 2.0, z + len / 2.0),
                v3(depth, h / 2.0, len / 2.0),
                0.0,
                material(rng, tex, false),
                0,
            ));
            z += len + rng.range(0.0, 4.0);
        }
    }
    let mut instance = 1u16;
    for _ in 0..rng.int(2, 8) {
        let lane = if rng.chance(0.5) { -1.0 } else { 1.0 };
        let x = lane * rng.range(1.0, road_half - 1.0);
        let z = rng.range(5.0, 60.0);
        let body = material(rng, Texture::Flat, true);
        objects.push(boxed(
            v3(x, 0.55, z),
            v3(0.9, 0.4, 2.2),
            rng.range(-0.1, 0.1),
            body,
            instance,
        ));
        objects.push(boxed(
            v3(x, 1.2, z - 0.2),
            v3(0.8, 0.3, 1.2),
            0.0,
            body,
            instance,
        ));
        instance += 1;
    }
    for _ in 0..rng.int(3, 10) {
        let side = if rng.chance(0.5) { -1.0 } else { 1.0 };
        let x = side * (road_half + rng.range(0.5, 3.5));
        let z = rng.range(3.0, 70.0);
        if rng.chance(0.5) {
            objects.push(Object {
                shape: Shape::Cylinder {
                    base: v3(x, 0.0, z),
                    radius: 0.08,
                    height: rng.range(3.0, 6.0),
                },
                material: material(rng, Texture::Flat, false),
                instance,
            });
        } else {
            let trunk = rng.range(1.5, 3.0);
            objects.push(Object {
                shape: Shape::Cylinder {
                    base: v3(x, 0.0, z),
                    radius: 0.15,
                    height: trunk,
                },
                material: Material {
                    albedo: v3(0.35, 0.25, 0.15),
                    texture: Texture::Wood,
                    frequency: 3.0,
                    accent: v3(0.25, 0.18, 0.1),
                },
                instance,
            });
            objects.push(Object {
                shape: Shape::Sphere {
                    center: v3(x, trunk + 1.0, z),
                    radius: rng.range(1.0, 2.0),
                },
                material: Material {
                    albedo: v3(0.2, rng.range(0.35, 0.55), 0.15),
                    texture: Texture::Noise,
                    frequency: 2.0,
                    accent: v3(0.1, 0.25, 0.08),
                },
                instance,
            });
        }
        instance += 1;
    }
    // The sun: far away, its intensity set so the ground receives about 0.9 after the renderer's
    // 1 / (1 + 0.05 d²) falloff.
    let sun = v3(rng.range(-50.0, 50.0), 80.0, rng.range(-20.0, 60.0));
    let lights = vec![Light {
        position: sun,
        intensity: rng.range(0.8, 1.0) * (1.0 + 0.05 * sun.dot(sun)),
    }];
    let cam = Camera::looking(
        v3(rng.range(-1.5, 1.5), 1.65, 0.0),
        rng.range(-0.08, 0.08),
        rng.range(-0.05, 0.02),
        0.0,
        width,
        height,
        Domain::Outdoor.focal_fraction(),
    );
    let scene = Scene {
        objects,
        lights,
        ambient: rng.range(0.3, 0.5),
        sky: Some(v3(
            rng.range(0.4, 0.6),
            rng.range(0.6, 0.75),
            rng.range(0.85, 1.0),
        )),
        max_depth: Domain::Outdoor.max_depth(),
    };
    (scene, cam)
}

/// Random primitives with random textures and colours in a random enclosure, seen from a random
/// pose: the SceneNet-like out-of-distribution source. Every object gets its own instance id.
fn ood(rng: &mut Rng, width: usize, height: usize) -> (Scene, Camera) {
    let mut objects = Vec::new();
    let (ew, ed, eh) = (
        rng.range(4.0, 10.0),
        rng.range(4.0, 10.0),
        rng.range(2.5, 6.0),
    );
    let tex = |rng: &mut Rng| *rng.pick(&TEXTURES);
    for (normal, d) in [
        (v3(0.0, 1.0, 0.0), 0.0),
        (v3(0.0, 1.0, 0.0), eh),
        (v3(1.0, 0.0, 0.0), -ew / 2.0),
        (v3(1.0, 0.0, 0.0), ew / 2.0),
        (v3(0.0, 0.0, 1.0), -1.0),
        (v3(0.0, 0.0, 1.0), ed),
    ] {
        let t = tex(rng);
        objects.push(Object {
            shape: Shape::Plane { normal, d },
            material: material(rng, t, true),
            instance: 0,
        });
    }
    let cam_pos = v3(
        rng.range(-ew / 4.0, ew / 4.0),
        rng.range(0.5, eh - 0.5),
        0.0,
    );
    let count = rng.int(2, 10);
    for k in 0..count {
        let instance = k as u16 + 1;
        let z = rng.range(0.8, ed - 0.5);
        let x = cam_pos.x + rng.range(-0.7, 0.7) * z * 0.6;
        let y = if rng.chance(0.5) {
            rng.range(0.1, eh - 0.3)
        } else {
            0.0
        };
        let t = tex(rng);
        let m = material(rng, t, true);
        let size = rng.range(0.15, 1.0);
        let shape = match rng.int(0, 2) {
            0 => Shape::Sphere {
                center: v3(x, y.max(size), z),
                radius: size,
            },
            1 => Shape::Box {
                center: v3(x, y.max(size * 0.5), z),
                half: v3(
                    size * rng.range(0.3, 1.2),
                    size * rng.range(0.3, 1.2),
                    size * rng.range(0.3, 1.2),
                ),
                yaw: rng.range(0.0, std::f32::consts::PI),
            },
            _ => Shape::Cylinder {
                base: v3(x, y, z),
                radius: size * rng.range(0.2, 0.8),
                height: size * rng.range(0.5, 3.0),
            },
        };
        objects.push(Object {
            shape,
            material: m,
            instance,
        });
    }
    let lights = (0..rng.int(1, 4))
        .map(|_| Light {
            position: v3(
                rng.range(-ew / 2.0, ew / 2.0),
                rng.range(1.0, eh),
                rng.range(0.0, ed),
            ),
            intensity: rng.range(0.3, 1.2),
        })
        .collect();
    let cam = Camera::looking(
        cam_pos,
        rng.range(-0.4, 0.4),
        rng.range(-0.5, 0.3),
        rng.range(-0.3, 0.3),
        width,
        height,
        Domain::Ood.focal_fraction(),
    );
    let scene = Scene {
        objects,
        lights,
        ambient: rng.range(0.15, 0.5),
        sky: None,
        max_depth: Domain::Ood.max_depth(),
    };
    (scene, cam)
}

/// Renders image `index` of a dataset (deterministic in `seed` and `index`).
pub fn render_sample(
    domain: Domain,
    width: usize,
    height: usize,
    seed: u64,
    index: u64,
    stereo: bool,
) -> Sample {
    let mut rng = Rng::derive(seed, index);
    let (scene, cam) = match domain {
        Domain::Indoor => indoor(&mut rng, width, height, &ROOM),
        Domain::IndoorAlt => indoor(&mut rng, width, height, &ROOM_ALT),
        Domain::Outdoor => outdoor(&mut rng, width, height),
        Domain::Ood => ood(&mut rng, width, height),
    };
    let sensor = Sensor {
        exposure: rng.range(0.8, 1.25),
        noise_sigma: rng.range(0.003, 0.015),
    };
    let view = render::render(&scene, &cam, sensor, &mut rng);
    let right = stereo.then(|| {
        render::render(
            &scene,
            &cam.shifted_right(domain.baseline()),
            sensor,
            &mut rng,
        )
        .rgb
    });
    Sample {
        width,
        height,
        rgb: view.rgb,
        depth: view.depth,
        instance: (domain == Domain::Ood).then_some(view.instance),
        right,
    }
}

/// Renders `count` samples in parallel (rayon across images).
pub fn render_many(
    domain: Domain,
    width: usize,
    height: usize,
    seed: u64,
    start: u64,
    count: usize,
    stereo: bool,
) -> Vec<Sample> {
    use rayon::prelude::*;
    (0..count as u64)
        .into_par_iter()
        .map(|i| render_sample(domain, width, height, seed, start + i, stereo))
        .collect()
}

/// The `manifest.json` of a simulated dataset.
pub fn manifest(
    domain: Domain,
    width: usize,
    height: usize,
    count: usize,
    seed: u64,
    stereo: bool,
) -> Manifest {
    let f = domain.focal_fraction() * width as f32;
    Manifest {
        format: DATASET_FORMAT.into(),
        version: DATASET_VERSION,
        domain: domain.name().into(),
        width,
        height,
        count,
        // millimetres indoors; KITTI's 1/256 m outdoors so 80 m fits 16 bits
        depth_scale: if domain == Domain::Outdoor {
            256.0
        } else {
            1000.0
        },
        max_depth: domain.max_depth(),
        fx: f,
        fy: f,
        cx: width as f32 / 2.0,
        cy: height as f32 / 2.0,
        baseline: if stereo { domain.baseline() } else { 0.0 },
        seed,
        generator: format!("depthling {}", env!("CARGO_PKG_VERSION")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        for domain in [Domain::Indoor, Domain::Outdoor, Domain::Ood] {
            let a = render_sample(domain, 40, 30, 9, 3, true);
            let b = render_sample(domain, 40, 30, 9, 3, true);
            assert_eq!(a, b, "{domain:?} is not deterministic");
            let c = render_sample(domain, 40, 30, 10, 3, true);
            assert_ne!(a.rgb, c.rgb);
        }
    }

    /// Warping the right view to the left with the ground-truth disparity f·B/Z reproduces the
    /// left view on non-occluded pixels; warping with zero disparity does not.
    #[test]
    fn stereo_views_agree_under_ground_truth_disparity() {
        for domain in [Domain::Indoor, Domain::Outdoor] {
            let (w, h) = (96usize, 72usize);
            let f = domain.focal_fraction() * w as f32;
            let b = domain.baseline();
            let (mut err, mut err0, mut n) = (0f64, 0f64, 0usize);
            for index in 0..4 {
                let s = render_sample(domain, w, h, 21, index, true);
                let right = s.right.as_ref().expect("stereo view");
                let disp = |x: usize, y: usize| {
                    let z = s.depth[y * w + x];
                    if z > 0.0 {
                        f * b / z
                    } else {
                        f32::NAN
                    }
                };
                for y in 0..h {
                    for x in 2..w - 2 {
                        let d = disp(x, y);
                        // skip invalid depth and depth edges (occlusions), and warps off-image
                        if !d.is_finite()
                            || (disp(x - 2, y) - d).abs() > 0.5
                            || (disp(x + 2, y) - d).abs() > 0.5
                        {
                            continue;
                        }
                        let xr = x as f32 - d;
                        if xr < 0.0 || xr > (w - 2) as f32 {
                            continue;
                        }
                        let (x0, t) = (xr.floor() as usize, xr - xr.floor());
                        for c in 0..3 {
                            let l = s.rgb[(y * w + x) * 3 + c] as f32;
                            let r = (1.0 - t) * right[(y * w + x0) * 3 + c] as f32
                                + t * right[(y * w + x0 + 1) * 3 + c] as f32;
                            err += (l - r).abs() as f64;
                            err0 += (l - right[(y * w + x) * 3 + c] as f32).abs() as f64;
                        }
                        n += 3;
                    }
                }
            }
            let (err, err0) = (err / n as f64, err0 / n as f64);
            assert!(n > 10_000, "{domain:?}: too few comparable pixels ({n})");
            assert!(
                err < 8.0,
                "{domain:?}: warped right view differs by {err:.2}/255 on average"
            );
            assert!(
                err < 0.6 * err0,
                "{domain:?}: warping ({err:.2}) no better than no warp ({err0:.2})"
            );
        }
    }

    /// Where depth jumps between neighbours (an occluding edge) the instance ids differ, and
    /// object pixels carry their own ids.
    #[test]
    fn instance_masks_follow_depth_discontinuities() {
        let (mut jumps, mut id_changes) = (0usize, 0usize);
        for s in render_many(Domain::Ood, 96, 72, 8, 0, 8, false) {
            let ids = s.instance.as_ref().unwrap();
            let (w, h) = (s.width, s.height);
            for y in 0..h {
                for x in 0..w - 1 {
                    let (a, b) = (s.depth[y * w + x], s.depth[y * w + x + 1]);
                    if a > 0.0 && b > 0.0 && (a - b).abs() / a.min(b) > 0.25 {
                        jumps += 1;
                        id_changes += (ids[y * w + x] != ids[y * w + x + 1]) as usize;
                    }
                }
            }
        }
        assert!(jumps > 100, "too few depth discontinuities ({jumps})");
        let share = id_changes as f64 / jumps as f64;
        assert!(
            share > 0.8,
            "only {:.0}% of depth discontinuities change instance id",
            100.0 * share
        );
    }

    #[test]
    fn domain_depth_statistics() {
        let indoor = render_many(Domain::Indoor, 48, 36, 1, 0, 12, false);
        for s in &indoor {
            let valid: Vec<f32> = s.depth.iter().copied().filter(|d| *d > 0.0).collect();
            assert!(
                valid.len() as f32 >= 0.95 * s.depth.len() as f32,
                "indoor image with <95% valid depth"
            );
            assert!(
                valid.iter().all(|d| (0.05..=10.0).contains(d)),
                "indoor depth outside 0.05–10 m"
            );
        }
        let outdoor = render_many(Domain::Outdoor, 48, 36, 1, 0, 6, false);
        for s in &outdoor {
            let invalid = s.depth.iter().filter(|d| **d == 0.0).count();
            assert!(invalid > 0, "outdoor image without sky");
            assert!(s.depth.iter().all(|d| *d <= 80.0));
        }
        let ood = render_many(Domain::Ood, 48, 36, 1, 0, 12, false);
        for s in &ood {
            let ids = s.instance.as_ref().expect("ood writes instance masks");
            let mut seen: Vec<u16> = ids.iter().copied().filter(|i| *i > 0).collect();
            seen.sort();
            seen.dedup();
            assert!(!seen.is_empty(), "no object visible");
        }
    }
}
