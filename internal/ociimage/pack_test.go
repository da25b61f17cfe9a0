package ociimage

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func untar(t *testing.T, r io.Reader) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		out[h.Name] = b
		if h.Typeflag == tar.TypeSymlink {
			out[h.Name] = []byte("->" + h.Linkname)
		}
	}
}

func TestPackMakesAConsistentOCIArchive(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "bin"), 0o755)
	os.WriteFile(filepath.Join(root, "bin", "busybox"), []byte("#!fake"), 0o755)
	os.Symlink("busybox", filepath.Join(root, "bin", "sh"))

	var a, b bytes.Buffer
	opts := Options{Ref: "docker.io/library/test:v1", Cmd: []string{"/bin/sh"}}
	if err := Pack(&a, root, opts); err != nil {
		t.Fatal(err)
	}
	if err := Pack(&b, root, opts); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Error("packing the same directory twice gave different archives")
	}
	files := untar(t, &a)
	// Every blob's name is its content's digest.
	for name, data := range files {
		if filepath.Dir(name) == "blobs/sha256" {
			sum := sha256.Sum256(data)
			if hex.EncodeToString(sum[:]) != filepath.Base(name) {
				t.Errorf("blob %s does not match its digest", name)
			}
		}
	}
	var index ocispec.Index
	if err := json.Unmarshal(files["index.json"], &index); err != nil || len(index.Manifests) != 1 {
		t.Fatalf("index.json: %v %s", err, files["index.json"])
	}
	m := index.Manifests[0]
	if m.Annotations["io.containerd.image.name"] != opts.Ref || m.Annotations[ocispec.AnnotationRefName] != "v1" {
		t.Errorf("annotations %v", m.Annotations)
	}
	var manifest ocispec.Manifest
	json.Unmarshal(files["blobs/sha256/"+m.Digest.Encoded()], &manifest)
	var cfg ocispec.Image
	json.Unmarshal(files["blobs/sha256/"+manifest.Config.Digest.Encoded()], &cfg)
	if len(cfg.Config.Cmd) != 1 || cfg.Config.Cmd[0] != "/bin/sh" {
		t.Errorf("config cmd %v", cfg.Config.Cmd)
	}
	layer := files["blobs/sha256/"+manifest.Layers[0].Digest.Encoded()]
	zr, err := gzip.NewReader(bytes.NewReader(layer))
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(zr)
	if sum := sha256.Sum256(raw); "sha256:"+hex.EncodeToString(sum[:]) != cfg.RootFS.DiffIDs[0].String() {
		t.Error("diff id is not the digest of the uncompressed layer")
	}
	entries := untar(t, bytes.NewReader(raw))
	if string(entries["bin/busybox"]) != "#!fake" || string(entries["bin/sh"]) != "->busybox" {
		t.Errorf("layer entries %v", entries)
	}
}
