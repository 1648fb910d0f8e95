{
  description = "kraft-xtask: declarative, content-addressed builds of Unikraft unikernels";

  # kraft-xtask needs Rust >= 1.89 (rust-version in Cargo.toml).
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});

      cargoToml = builtins.fromTOML (builtins.readFile ./xtask/Cargo.toml);
      rustVersion = (builtins.fromTOML (builtins.readFile ./Cargo.toml)).workspace.package.rust-version;

      # Apps of this repository that have a kraft.lock: apps/<name>/kraft.lock.
      appNames =
        let
          dir = ./apps;
          entries = if builtins.pathExists dir then builtins.readDir dir else { };
        in
        builtins.filter (n: entries.${n} == "directory" && builtins.pathExists (dir + "/${n}/kraft.lock")) (
          builtins.attrNames entries
        );

      # What the tool is built from: nothing else invalidates it.
      toolSrc = lib.fileset.toSource {
        root = ./.;
        fileset = lib.fileset.unions [
          ./Cargo.toml
          ./Cargo.lock
          ./kraft
          ./xtask
          ./recipes
        ];
      };

      mkXtask =
        pkgs:
        assert lib.assertMsg (lib.versionAtLeast pkgs.rustc.version rustVersion)
          "kraft-xtask needs rustc >= ${rustVersion}; this nixpkgs has ${pkgs.rustc.version} (use a newer nixpkgs input)";
        pkgs.rustPlatform.buildRustPackage {
          pname = "kraft-xtask";
          version = cargoToml.package.version;
          src = toolSrc;
          cargoLock.lockFile = ./Cargo.lock;
          cargoBuildFlags = [
            "-p"
            "xtask"
            "--bin"
            "xtask"
          ];
          # The test suite drives git, gcc, make, bubblewrap and nix on real
          # repositories; run it with `nix develop -c cargo test`.
          doCheck = false;
          nativeBuildInputs = [ pkgs.makeWrapper ];
          # The tool runs `cargo metadata` (workspace discovery) and `git`
          # (fetching); the caller's own cargo/git win when on PATH.
          postInstall = ''
            wrapProgram $out/bin/xtask --suffix PATH : ${
              lib.makeBinPath [
                pkgs.cargo
                pkgs.git
              ]
            }
          '';
          meta = {
            description = cargoToml.package.description;
            license = lib.licenses.bsd3;
            mainProgram = "xtask";
            platforms = lib.platforms.linux;
          };
        };

      mkMirror =
        { pkgs, lock, ... }@args: pkgs.callPackage ./nix/mirror.nix { } (builtins.removeAttrs args [ "pkgs" ]);

      mkApp =
        {
          pkgs,
          xtask ? mkXtask pkgs,
          ...
        }@args:
        pkgs.callPackage ./nix/build-app.nix { inherit xtask; } (
          builtins.removeAttrs args [
            "pkgs"
            "xtask"
          ]
        );
    in
    {
      lib = {
        # Plain fetch specs of a kraft.lock (no fetching, no nixpkgs):
        # { components = [ { name; url; rev; ref; narHash; treeBlake3; ... } ];
        #   archives = [ { name; url; sha256; } ]; local = [ ... ]; sourceDateEpoch; }
        kraftLockSpecs = lock: import ./nix/from-kraft-lock.nix { inherit lock; };

        # The same, each component with `src` (builtins.fetchGit by rev,
        # checked against the lock's nar-hash) and each archive with `file`
        # (builtins.fetchurl, checked against its sha256). Lazy: only what is
        # used is fetched. Needs no nixpkgs.
        fromKraftLock =
          lock:
          import ./nix/from-kraft-lock.nix {
            inherit lock;
            fetch = true;
          };

        # One directory with every locked tree and archive, laid out as a
        # kraft store (store/) plus an archive directory (archives/), and a
        # bin/kraft-seed-store script. See nix/mirror.nix.
        #   mkMirror { pkgs; lock = ./apps/helloworld/kraft.lock; }
        inherit mkMirror;

        # Build an app with `xtask --frozen build` inside the Nix sandbox.
        #   buildApp { src = ./.; app = "helloworld"; }   (pkgs defaults to x86_64-linux)
        buildApp =
          {
            system ? "x86_64-linux",
            pkgs ? nixpkgs.legacyPackages.${system},
            ...
          }@args:
          mkApp ({ inherit pkgs; } // builtins.removeAttrs args [ "system" ]);
      };

      packages = forAllSystems (
        pkgs:
        let
          xtask = mkXtask pkgs;
          perApp = lib.concatMap (app: [
            (lib.nameValuePair app (mkApp {
              inherit pkgs xtask app;
              src = self;
            }))
            (lib.nameValuePair "${app}-mirror" (mkMirror {
              inherit pkgs;
              lock = ./apps + "/${app}/kraft.lock";
              name = "kraft-mirror-${app}";
            }))
          ]) appNames;
        in
        lib.listToAttrs perApp
        // {
          inherit xtask;
          default = xtask;
        }
      );

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages = with pkgs; [
            # the tool
            cargo
            rustc
            clippy
            rustfmt
            # Unikraft builds
            gcc
            gnumake
            flex
            bison
            python3
            which
            unzip
            bc
            qemu
            bubblewrap
            git
            # tests
            nginx
            nix
          ];
          # Build commands see PATH=/usr/bin:/bin by default; on NixOS the
          # toolchain lives in /nix/store.
          shellHook = ''
            export KRAFT_SANDBOX_PATH="$PATH"
          '';
        };
      });

      checks = forAllSystems (pkgs: {
        xtask = self.packages.${pkgs.stdenv.hostPlatform.system}.xtask;
        # The lock reader evaluates on every app's lock.
        lock-specs = pkgs.writeText "kraft-lock-specs.json" (
          builtins.toJSON (lib.genAttrs appNames (app: self.lib.kraftLockSpecs (./apps + "/${app}/kraft.lock")))
        );
      });

      formatter = forAllSystems (pkgs: pkgs.nixfmt-rfc-style);
    };
}
