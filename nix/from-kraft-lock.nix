# kraft.lock -> fetch specs. Needs no nixpkgs: plain `nix-instantiate` can
# evaluate it, offline:
#
#   nix-instantiate --eval --strict --json nix/from-kraft-lock.nix \
#     --arg lock ./apps/helloworld/kraft.lock
#
# returns (plain data, JSON-safe)
#
#   { version = 1;
#     components = [ { name; kind; url; rev; ref; narHash; treeBlake3; commitTime; } ];  # git sources
#     local      = [ { name; kind; path; } ];          # `path+<dir>` sources (relative to the lock's dir)
#     archives   = [ { name; url; sha256; } ];         # origin archives, one per (sha256, name), sorted
#     sourceDateEpoch = <newest commit-time> or null; }
#
# With `fetch = true` every component also gets `src` (the fetched tree, a
# store path) and every archive `file` (the fetched file), using `fetchGit`
# and `fetchurl` (builtins by default; nix/mirror.nix passes nixpkgs'
# fixed-output fetchers instead). `fetchGit` is called as builtins.fetchGit
# is: `{ url; rev; narHash; name; ref = "refs/..."; }`, or `allRefs = true`
# when the lock pins a bare commit; `fetchurl` as `{ url; sha256; name; }`.
#
# Every git tree is checked by Nix against the lock's `nar-hash` (the tool
# writes exactly what `nix hash path` prints for the exported tree), and every
# archive against its sha256, so what Nix fetches is what kraft-xtask locked.
{
  # Path to a kraft.lock, its TOML text, or the already parsed attrset.
  lock,
  fetch ? false,
  fetchGit ? builtins.fetchGit,
  fetchurl ? builtins.fetchurl,
  # Like KRAFT_MIRRORS, for fetching only (the specs keep upstream URLs):
  # { "https://github.com/" = "/srv/mirror/github/"; }; the longest matching
  # prefix wins; a replacement may be a URL or an absolute path.
  mirrors ? { },
  # Like KRAFT_ARCHIVE_DIR: a directory holding origin archives by file name,
  # tried before their URLs (each is still checked against its sha256).
  archiveDir ? null,
}:
let
  inherit (builtins)
    concatMap
    filter
    foldl'
    isAttrs
    listToAttrs
    attrValues
    match
    readFile
    stringLength
    substring
    typeOf
    ;

  where = if typeOf lock == "path" || (typeOf lock == "string" && substring 0 1 lock == "/") then toString lock else "kraft.lock";

  parsed =
    if isAttrs lock then
      lock
    else if typeOf lock == "path" || substring 0 1 lock == "/" then
      builtins.fromTOML (readFile lock)
    else
      builtins.fromTOML lock;

  fail = msg: throw "${where}: ${msg} (regenerate it with `cargo xtask lock <app>`)";

  version = parsed.version or (fail "no `version`");
  checkedVersion =
    if version == 1 then version else fail "format version ${toString version}; this file reads version 1";

  hasPrefix = p: s: substring 0 (stringLength p) s == p;
  dropPrefix = p: s: substring (stringLength p) (stringLength s) s;
  matches = re: s: builtins.isString s && match re s != null;

  entries = parsed.component or [ ];

  gitEntries = filter (c: hasPrefix "git+" (c.source or "")) entries;
  pathEntries = filter (c: hasPrefix "path+" (c.source or "")) entries;
  unknown = filter (c: !(hasPrefix "git+" (c.source or "") || hasPrefix "path+" (c.source or ""))) entries;

  field =
    c: f: re:
    let
      v = c.${f} or (fail "component `${c.name or "?"}` has a git source but no `${f}`");
    in
    if matches re v then v else fail "component `${c.name or "?"}`: malformed `${f}` ${builtins.toJSON v}";

  component =
    c:
    let
      rev = field c "commit" "[0-9a-f]{40}";
      ref = c.ref or null;
    in
    {
      name = c.name;
      kind = c.kind;
      url = dropPrefix "git+" c.source;
      inherit rev ref;
      narHash = field c "nar-hash" "sha256-[A-Za-z0-9+/]{43}=";
      treeBlake3 = field c "tree-blake3" "[0-9a-f]{64}";
      commitTime = c.commit-time or null;
    };

  components = map component gitEntries;

  local = map (c: {
    name = c.name;
    kind = c.kind;
    path = dropPrefix "path+" c.source;
  }) pathEntries;

  # One entry per (sha256, name), sorted by that key: components sharing an
  # archive share one download.
  archive =
    c: a:
    let
      sha256 = a.sha256 or (fail "an archive of `${c.name}` has no sha256");
      name = a.name or (fail "an archive of `${c.name}` has no name");
    in
    if !(matches "[0-9a-f]{64}" sha256) then
      fail "archive `${name}` of `${c.name}`: malformed sha256 ${builtins.toJSON sha256}"
    else if !(matches "[^/]+" name) || name == "." || name == ".." then
      fail "archive of `${c.name}`: bad file name ${builtins.toJSON name}"
    else
      {
        name = "${sha256}/${name}";
        value = {
          inherit name sha256;
          url = a.url;
        };
      };
  archives = attrValues (listToAttrs (concatMap (c: map (archive c) (c.archive or [ ])) entries));

  times = filter (t: t != null) (map (c: c.commitTime) components);
  sourceDateEpoch = if times == [ ] then null else foldl' (a: b: if b > a then b else a) 0 times;

  # A store path name may only use these characters.
  storeName =
    prefix: name: if match "[A-Za-z0-9+._?=-]+" name != null then name else "${prefix}";

  refArgs =
    c:
    if c.ref != null && (hasPrefix "refs/heads/" c.ref || hasPrefix "refs/tags/" c.ref) then
      { ref = c.ref; }
    else
      { allRefs = true; };

  # KRAFT_MIRRORS' rule: the longest matching prefix wins.
  rewrite =
    url:
    let
      prefixes = filter (p: hasPrefix p url) (builtins.attrNames mirrors);
      best = foldl' (a: b: if a == null || stringLength b > stringLength a then b else a) null prefixes;
    in
    if best == null then url else mirrors.${best} + dropPrefix best url;

  fetchComponent =
    c:
    fetchGit (
      {
        inherit (c) rev narHash;
        url = rewrite c.url;
        name = storeName "source" "${c.name}-source";
      }
      // refArgs c
    );

  fetchArchive =
    a:
    fetchurl {
      inherit (a) sha256;
      url =
        if archiveDir != null && builtins.pathExists "${toString archiveDir}/${a.name}" then
          "file://${toString archiveDir}/${a.name}"
        else
          let
            u = rewrite a.url;
          in
          if hasPrefix "/" u then "file://${u}" else u;
      name = storeName "archive" a.name;
    };
in
builtins.seq checkedVersion (
if unknown != [ ] then
  fail "component `${(builtins.head unknown).name or "?"}` has an unknown source; sources are `git+<url>` or `path+<dir>`"
else
  {
    version = checkedVersion;
    inherit local sourceDateEpoch;
    components = if fetch then map (c: c // { src = fetchComponent c; }) components else components;
    archives = if fetch then map (a: a // { file = fetchArchive a; }) archives else archives;
  }
)
