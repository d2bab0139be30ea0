package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"text/tabwriter"

	"github.com/solstice-ci/solstice/internal/vm/image"
)

// imageFlags are the flags every command that needs images shares.
type imageFlags struct {
	catalog string
	cache   string
}

func (f *imageFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.catalog, "catalog", "", "image catalog file (default: the built-in catalog)")
	fs.StringVar(&f.cache, "cache", image.DefaultCacheDir(), "image cache folder")
}

func (f *imageFlags) open() (*image.Catalog, *image.Cache, error) {
	var cat *image.Catalog
	var err error
	if f.catalog == "" {
		cat, err = image.DefaultCatalog()
	} else {
		cat, err = loadCatalogFile(f.catalog)
	}
	if err != nil {
		return nil, nil, err
	}
	return cat, &image.Cache{Dir: f.cache}, nil
}

func imageCmd() command {
	return command{"list, pull and build VM images (list | pull LABEL | build LABEL)", func(ctx context.Context, env *cliEnv, args []string) error {
		fs := flag.NewFlagSet("image", flag.ContinueOnError)
		fs.SetOutput(env.stderr)
		var f imageFlags
		f.register(fs)
		fs.Usage = func() {
			fmt.Fprintln(env.stderr, "usage: solstice image [flags] list | pull LABEL | build LABEL")
			fs.PrintDefaults()
		}
		if err := fs.Parse(args); err != nil {
			return exitError{2}
		}
		cat, cache, err := f.open()
		if err != nil {
			return err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			fs.Usage()
			return exitError{2}
		}
		switch rest[0] {
		case "list":
			tw := tabwriter.NewWriter(env.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "LABEL\tOS\tARCH\tSOURCE\tCACHED")
			for _, e := range cat.Entries() {
				src := e.URL
				if e.Build != "" {
					src = "built here (" + e.Build + ")"
				}
				cached := "no"
				if l, err := cache.Resolve(e); err == nil {
					cached = l.Dir
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", e.Label, e.OS, e.Arch, src, cached)
			}
			return tw.Flush()
		case "pull", "build":
			if len(rest) != 2 {
				fs.Usage()
				return exitError{2}
			}
			e, ok := cat.Lookup(rest[1])
			if !ok {
				return fmt.Errorf("no image %q in the catalog (solstice image list)", rest[1])
			}
			var l image.Local
			if rest[0] == "pull" {
				l, err = cache.Pull(ctx, e, env.stderr)
			} else {
				if e.Build == "" {
					return errors.New("image " + e.Label + " is downloaded, not built: solstice image pull " + e.Label)
				}
				l, err = cache.Build(ctx, e, env.stderr)
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(env.stdout, "%s: %s\n", e.Label, l.Disk)
			return nil
		}
		fs.Usage()
		return exitError{2}
	}}
}
