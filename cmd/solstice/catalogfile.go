package main

import (
	"fmt"
	"os"

	"github.com/solstice-ci/solstice/internal/vm/image"
)

func loadCatalogFile(path string) (*image.Catalog, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("opening catalog: %w", err)
	}
	defer f.Close()
	return image.ParseCatalog(f, path)
}
