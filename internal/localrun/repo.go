package localrun

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
)

// Repo describes the local repository a workflow runs from.
type Repo struct {
	Root string // top folder of the work tree
	SHA  string // HEAD commit
	Ref  string // refs/heads/<branch>, or "" when HEAD is detached
	// Name is owner/repo, from the origin remote when it has one, else
	// "local/<folder name>".
	Name string
	// RemoteURL is the origin URL, if any.
	RemoteURL string
}

// git runs git in dir and returns its trimmed standard output.
func git(ctx context.Context, dir string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "git", args...)
	cmd.Dir = dir
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("git %s in %s: %w: %s", strings.Join(args, " "), dir, err, strings.TrimSpace(errb.String()))
	}
	return strings.TrimSpace(out.String()), nil
}

// OpenRepo finds the repository that holds dir.
func OpenRepo(ctx context.Context, dir string) (Repo, error) {
	root, err := git(ctx, dir, "rev-parse", "--show-toplevel")
	if err != nil {
		return Repo{}, fmt.Errorf("%s is not inside a git repository: %w", dir, err)
	}
	sha, err := git(ctx, root, "rev-parse", "--verify", "HEAD^{commit}")
	if err != nil {
		return Repo{}, fmt.Errorf("repository %s has no commit at HEAD: %w", root, err)
	}
	r := Repo{Root: root, SHA: sha}
	if ref, err := git(ctx, root, "symbolic-ref", "-q", "HEAD"); err == nil {
		r.Ref = ref
	}
	if url, err := git(ctx, root, "remote", "get-url", "origin"); err == nil {
		r.RemoteURL = url
	}
	r.Name = repoName(r.RemoteURL, root)
	return r, nil
}

var remoteNameRe = regexp.MustCompile(`[:/]([^/:]+)/([^/]+?)(\.git)?/?$`)

// repoName derives owner/repo from a remote URL, else from the folder.
func repoName(remote, root string) string {
	if m := remoteNameRe.FindStringSubmatch(remote); m != nil {
		return m[1] + "/" + m[2]
	}
	return "local/" + filepath.Base(root)
}

// Bundle writes a git bundle of HEAD (and its branch) to dest. The guest
// cannot see the host's files, so the agent checks the commit out from it.
// Uncommitted changes are not in it: exec runs what is committed.
func (r Repo) Bundle(ctx context.Context, dest string) error {
	args := []string{"bundle", "create", dest, "HEAD"}
	if r.Ref != "" {
		args = append(args, r.Ref)
	}
	if _, err := git(ctx, r.Root, args...); err != nil {
		return fmt.Errorf("bundling %s: %w", r.Root, err)
	}
	return nil
}

// Dirty reports whether the work tree has uncommitted changes.
func (r Repo) Dirty(ctx context.Context) bool {
	out, err := git(ctx, r.Root, "status", "--porcelain", "--untracked-files=no")
	return err == nil && out != ""
}
