package image

import (
	"bufio"
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/klauspost/compress/zstd"
	"github.com/schollz/progressbar/v3"
	"github.com/ulikunitz/xz"
)

//go:embed recipes/linux-test.sh
var linuxTestRecipe []byte

// recipes are the local image builds, by Entry.Build.
var recipes = map[string][]byte{"linux-test": linuxTestRecipe}

// ErrNotCached means the image is not in the cache yet.
var ErrNotCached = errors.New("image not in the cache")

// Cache keeps base images in Dir, one folder per image version. A folder
// appears only when its image is whole: downloads and builds happen in a
// temporary folder beside it and are renamed into place.
type Cache struct {
	Dir string
	// HTTP is the client for downloads; nil means http.DefaultClient.
	HTTP *http.Client
}

// DefaultCacheDir is $SOLSTICE_IMAGE_CACHE, else $XDG_CACHE_HOME/solstice/images,
// else ~/.cache/solstice/images: outside any clone, so CI keeps built
// images between runs.
func DefaultCacheDir() string {
	if d := os.Getenv("SOLSTICE_IMAGE_CACHE"); d != "" {
		return d
	}
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "solstice", "images")
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".cache", "solstice", "images")
	}
	return filepath.Join(os.TempDir(), "solstice-images")
}

// Local is an image in the cache.
type Local struct {
	Dir    string
	Disk   string
	Kernel string // only for Boot "kernel"
	Initrd string
}

// RecipeHash is the cache key of a built image: a hash of its recipe.
func RecipeHash(build string) (string, error) {
	r, ok := recipes[build]
	if !ok {
		return "", fmt.Errorf("no recipe %q", build)
	}
	s := sha256.Sum256(r)
	return hex.EncodeToString(s[:8]), nil
}

func (c *Cache) folder(e Entry) (string, error) {
	if e.Build != "" {
		h, err := RecipeHash(e.Build)
		if err != nil {
			return "", fmt.Errorf("image %s: %w", e.Label, err)
		}
		return filepath.Join(c.Dir, e.Label+"-"+h), nil
	}
	return filepath.Join(c.Dir, e.Label), nil
}

func localIn(dir string, e Entry) Local {
	l := Local{Dir: dir, Disk: filepath.Join(dir, "disk."+e.Format)}
	if e.Boot == "kernel" {
		l.Kernel, l.Initrd = filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "initrd.img")
	}
	return l
}

// Resolve returns the cached image of e, or ErrNotCached.
func (c *Cache) Resolve(e Entry) (Local, error) {
	dir, err := c.folder(e)
	if err != nil {
		return Local{}, err
	}
	l := localIn(dir, e)
	for _, p := range []string{l.Disk, l.Kernel, l.Initrd} {
		if p == "" {
			continue
		}
		if _, err := os.Stat(p); err != nil {
			return Local{}, fmt.Errorf("image %s: %w (%s missing; run `solstice image %s %s`)",
				e.Label, ErrNotCached, p, map[bool]string{true: "build", false: "pull"}[e.Build != ""], e.Label)
		}
	}
	return l, nil
}

// Ensure returns the cached image of e, pulling or building it first when
// it is missing. progress receives human-readable progress.
func (c *Cache) Ensure(ctx context.Context, e Entry, progress io.Writer) (Local, error) {
	if l, err := c.Resolve(e); err == nil {
		return l, nil
	}
	if e.Build != "" {
		return c.Build(ctx, e, progress)
	}
	return c.Pull(ctx, e, progress)
}

// lock serializes pulls and builds of one label across processes.
func (c *Cache) lock(label string) (func(), error) {
	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating image cache %s: %w", c.Dir, err)
	}
	f, err := os.OpenFile(filepath.Join(c.Dir, "."+label+".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("locking image %s: %w", label, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("locking image %s: %w", label, err)
	}
	return func() { _ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }, nil
}

// install renames the finished temporary folder tmp to dir, replacing an
// older version.
func install(tmp, dir string) error {
	if _, err := os.Stat(dir); err == nil {
		old := dir + ".old"
		_ = os.RemoveAll(old)
		if err := os.Rename(dir, old); err != nil {
			return fmt.Errorf("moving old image aside: %w", err)
		}
		defer os.RemoveAll(old)
	}
	if err := os.Rename(tmp, dir); err != nil {
		return fmt.Errorf("installing image into %s: %w", dir, err)
	}
	return nil
}

// Build runs e's recipe (as root: it uses debootstrap and chroot) and
// installs the result. The recipe's output streams to log.
func (c *Cache) Build(ctx context.Context, e Entry, log io.Writer) (Local, error) {
	recipe, ok := recipes[e.Build]
	if !ok {
		return Local{}, fmt.Errorf("image %s: no recipe %q", e.Label, e.Build)
	}
	unlock, err := c.lock(e.Label)
	if err != nil {
		return Local{}, err
	}
	defer unlock()
	if l, err := c.Resolve(e); err == nil {
		return l, nil // another process built it while we waited
	}
	if os.Geteuid() != 0 {
		return Local{}, fmt.Errorf("building image %s needs root (debootstrap and chroot)", e.Label)
	}
	dir, _ := c.folder(e)
	tmp, err := os.MkdirTemp(c.Dir, ".build-"+e.Label+"-")
	if err != nil {
		return Local{}, fmt.Errorf("building image %s: %w", e.Label, err)
	}
	defer os.RemoveAll(tmp)
	script := filepath.Join(tmp, "recipe.sh")
	if err := os.WriteFile(script, recipe, 0o700); err != nil {
		return Local{}, fmt.Errorf("building image %s: %w", e.Label, err)
	}
	out := filepath.Join(tmp, "out")
	if err := os.Mkdir(out, 0o755); err != nil {
		return Local{}, fmt.Errorf("building image %s: %w", e.Label, err)
	}
	cmd := exec.CommandContext(ctx, "bash", script)
	cmd.Env = append(os.Environ(), "OUT="+out, "DEBIAN_FRONTEND=noninteractive")
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Run(); err != nil {
		return Local{}, fmt.Errorf("building image %s (recipe %s): %w", e.Label, e.Build, err)
	}
	if err := install(out, dir); err != nil {
		return Local{}, err
	}
	return c.Resolve(e)
}

// Pull downloads e, verifies its sha256, decompresses it and installs it.
func (c *Cache) Pull(ctx context.Context, e Entry, progress io.Writer) (Local, error) {
	if e.URL == "" {
		return Local{}, fmt.Errorf("image %s has no download URL (it is built: solstice image build %s)", e.Label, e.Label)
	}
	unlock, err := c.lock(e.Label)
	if err != nil {
		return Local{}, err
	}
	defer unlock()
	want := e.SHA256
	if want == "" {
		if want, err = c.checksumFromURL(ctx, e); err != nil {
			return Local{}, err
		}
	}
	dir, _ := c.folder(e)
	tmp, err := os.MkdirTemp(c.Dir, ".pull-"+e.Label+"-")
	if err != nil {
		return Local{}, fmt.Errorf("pulling image %s: %w", e.Label, err)
	}
	defer os.RemoveAll(tmp)
	dl := filepath.Join(tmp, "download")
	got, err := c.download(ctx, e.URL, dl, progress)
	if err != nil {
		return Local{}, fmt.Errorf("pulling image %s: %w", e.Label, err)
	}
	if got != want {
		return Local{}, fmt.Errorf("pulling image %s: sha256 of %s is %s, want %s", e.Label, e.URL, got, want)
	}
	disk := filepath.Join(tmp, "out", "disk."+e.Format)
	if err := os.Mkdir(filepath.Dir(disk), 0o755); err != nil {
		return Local{}, err
	}
	if err := decompress(dl, disk, e.Compression); err != nil {
		return Local{}, fmt.Errorf("pulling image %s: %w", e.Label, err)
	}
	if err := os.WriteFile(filepath.Join(tmp, "out", "sha256"), []byte(want+"\n"), 0o644); err != nil {
		return Local{}, err
	}
	if err := install(filepath.Join(tmp, "out"), dir); err != nil {
		return Local{}, err
	}
	return c.Resolve(e)
}

func (c *Cache) client() *http.Client {
	if c.HTTP != nil {
		return c.HTTP
	}
	return http.DefaultClient
}

func (c *Cache) get(ctx context.Context, url string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.client().Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetching %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, fmt.Errorf("fetching %s: %s", url, resp.Status)
	}
	return resp, nil
}

// download writes url to dst with a progress bar and returns its sha256.
func (c *Cache) download(ctx context.Context, url, dst string, progress io.Writer) (string, error) {
	resp, err := c.get(ctx, url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	f, err := os.Create(dst)
	if err != nil {
		return "", err
	}
	defer f.Close()
	if progress == nil {
		progress = io.Discard
	}
	bar := progressbar.NewOptions64(resp.ContentLength,
		progressbar.OptionSetWriter(progress),
		progressbar.OptionSetDescription(path.Base(url)),
		progressbar.OptionShowBytes(true),
		progressbar.OptionThrottle(200_000_000),
		progressbar.OptionOnCompletion(func() { fmt.Fprintln(progress) }),
	)
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(f, h, bar), resp.Body); err != nil {
		return "", fmt.Errorf("downloading %s: %w", url, err)
	}
	_ = bar.Finish()
	if err := f.Close(); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// checksumFromURL reads the checksum file of e and returns the hash listed
// for the download's file name (or the only hash, if it lists one).
func (c *Cache) checksumFromURL(ctx context.Context, e Entry) (string, error) {
	resp, err := c.get(ctx, e.SHA256URL)
	if err != nil {
		return "", fmt.Errorf("reading checksum of %s: %w", e.Label, err)
	}
	defer resp.Body.Close()
	sum, err := ParseChecksums(io.LimitReader(resp.Body, 1<<20), path.Base(e.URL))
	if err != nil {
		return "", fmt.Errorf("checksum file %s: %w", e.SHA256URL, err)
	}
	return sum, nil
}

// ParseChecksums finds the sha256 of name in a checksum file of sha256sum
// lines ("hex  name", "hex *name") or BSD lines ("SHA256 (name) = hex"). A
// file with a single bare hash gives that hash.
func ParseChecksums(r io.Reader, name string) (string, error) {
	sc := bufio.NewScanner(r)
	var only []string
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasPrefix(line, "SHA256 (") {
			rest := strings.TrimPrefix(line, "SHA256 (")
			i := strings.LastIndex(rest, ") = ")
			if i < 0 {
				continue
			}
			if rest[:i] == name && hexRE.MatchString(strings.ToLower(rest[i+4:])) {
				return strings.ToLower(rest[i+4:]), nil
			}
			continue
		}
		fields := strings.Fields(line)
		sum := strings.ToLower(fields[0])
		if !hexRE.MatchString(sum) {
			continue
		}
		only = append(only, sum)
		if len(fields) >= 2 && strings.TrimPrefix(fields[1], "*") == name {
			return sum, nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", err
	}
	if len(only) == 1 {
		return only[0], nil
	}
	return "", fmt.Errorf("no sha256 for %s", name)
}

func decompress(src, dst, kind string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	defer out.Close()
	var r io.Reader = in
	switch kind {
	case "":
	case "zst":
		d, err := zstd.NewReader(in)
		if err != nil {
			return fmt.Errorf("reading zstd: %w", err)
		}
		defer d.Close()
		r = d
	case "xz":
		x, err := xz.NewReader(bufio.NewReaderSize(in, 1<<20))
		if err != nil {
			return fmt.Errorf("reading xz: %w", err)
		}
		r = x
	default:
		return fmt.Errorf("unknown compression %q", kind)
	}
	if _, err := io.Copy(out, r); err != nil {
		return fmt.Errorf("decompressing (%s): %w", kind, err)
	}
	return out.Close()
}
