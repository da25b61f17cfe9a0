// Package ociimage packs a root file system directory into a single-layer
// OCI image archive that `ctr images import` accepts. Berth's tests and
// demo use it because these machines have no registry to pull from.
package ociimage

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"time"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Options describe the image.
type Options struct {
	// Ref is the full image name, e.g. docker.io/library/busybox:berth.
	Ref string
	// Cmd and Env become the image's default process.
	Cmd []string
	Env []string
}

// epoch gives reproducible archives: the same directory yields the same
// image digest.
var epoch = time.Unix(0, 0)

// Pack writes an OCI image archive of rootfs to w.
func Pack(w io.Writer, rootfs string, o Options) error {
	layer, diffID, err := layerTarGz(rootfs)
	if err != nil {
		return err
	}
	env := o.Env
	if len(env) == 0 {
		env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	}
	cfg := ocispec.Image{
		Platform: ocispec.Platform{Architecture: runtime.GOARCH, OS: "linux"},
		Config:   ocispec.ImageConfig{Cmd: o.Cmd, Env: env},
		RootFS:   ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{diffID}},
	}
	cfgJSON, err := json.Marshal(cfg)
	if err != nil {
		return err
	}
	manifest := ocispec.Manifest{
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    descriptor(ocispec.MediaTypeImageConfig, cfgJSON),
		Layers:    []ocispec.Descriptor{descriptor(ocispec.MediaTypeImageLayerGzip, layer)},
	}
	manifest.SchemaVersion = 2
	manJSON, err := json.Marshal(manifest)
	if err != nil {
		return err
	}
	manDesc := descriptor(ocispec.MediaTypeImageManifest, manJSON)
	manDesc.Platform = &ocispec.Platform{Architecture: runtime.GOARCH, OS: "linux"}
	manDesc.Annotations = map[string]string{
		"io.containerd.image.name": o.Ref,
		ocispec.AnnotationRefName:  refTag(o.Ref),
	}
	index := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{manDesc}}
	index.SchemaVersion = 2
	indexJSON, err := json.Marshal(index)
	if err != nil {
		return err
	}

	tw := tar.NewWriter(w)
	files := []struct {
		name string
		data []byte
	}{
		{ocispec.ImageLayoutFile, []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		{"index.json", indexJSON},
		{blobPath(cfgJSON), cfgJSON},
		{blobPath(manJSON), manJSON},
		{blobPath(layer), layer},
	}
	for _, f := range files {
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Mode: 0o644, Size: int64(len(f.data)), ModTime: epoch, Typeflag: tar.TypeReg}); err != nil {
			return err
		}
		if _, err := tw.Write(f.data); err != nil {
			return err
		}
	}
	return tw.Close()
}

func refTag(ref string) string {
	for i := len(ref) - 1; i >= 0 && ref[i] != '/'; i-- {
		if ref[i] == ':' {
			return ref[i+1:]
		}
	}
	return "latest"
}

func descriptor(mediaType string, data []byte) ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(data), Size: int64(len(data))}
}

func blobPath(data []byte) string {
	sum := sha256.Sum256(data)
	return "blobs/sha256/" + hex.EncodeToString(sum[:])
}

// layerTarGz tars rootfs (regular files, directories, symlinks; sorted,
// with fixed times and root ownership) and returns the gzipped layer and
// the digest of the uncompressed tar (its diff id).
func layerTarGz(rootfs string) ([]byte, digest.Digest, error) {
	var paths []string
	err := filepath.WalkDir(rootfs, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != rootfs {
			paths = append(paths, p)
		}
		return nil
	})
	if err != nil {
		return nil, "", fmt.Errorf("read rootfs %s: %w", rootfs, err)
	}
	sort.Strings(paths)
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	dd := digest.SHA256.Digester()
	tw := tar.NewWriter(io.MultiWriter(zw, dd.Hash()))
	for _, p := range paths {
		st, err := os.Lstat(p)
		if err != nil {
			return nil, "", err
		}
		rel, _ := filepath.Rel(rootfs, p)
		link := ""
		if st.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return nil, "", err
			}
		}
		hdr, err := tar.FileInfoHeader(st, link)
		if err != nil {
			return nil, "", err
		}
		if !st.Mode().IsRegular() && !st.IsDir() && st.Mode()&fs.ModeSymlink == 0 {
			continue // device nodes and sockets do not belong in an image
		}
		hdr.Name = filepath.ToSlash(rel)
		if st.IsDir() {
			hdr.Name += "/"
		}
		hdr.ModTime, hdr.AccessTime, hdr.ChangeTime = epoch, time.Time{}, time.Time{}
		hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = 0, 0, "", ""
		hdr.Format = tar.FormatPAX
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, "", err
		}
		if st.Mode().IsRegular() {
			f, err := os.Open(p)
			if err != nil {
				return nil, "", err
			}
			_, err = io.Copy(tw, f)
			f.Close()
			if err != nil {
				return nil, "", err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, "", err
	}
	if err := zw.Close(); err != nil {
		return nil, "", err
	}
	return gz.Bytes(), dd.Digest(), nil
}

// PackFile writes the archive of rootfs to the file path, removing it
// again when packing fails.
func PackFile(path, rootfs string, o Options) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := Pack(f, rootfs, o); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	return f.Close()
}
