package runtime

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// ConfigFile is the name of the spec inside an OCI bundle.
const ConfigFile = "config.json"

// maxConfigSize bounds what LoadSpec reads: a config.json is a few KiB;
// anything this large is a mistake or an attack, not a container.
const maxConfigSize = 16 << 20

// LoadSpec reads and validates the config.json of the bundle directory.
// Every error names the bundle and says what is wrong with it.
func LoadSpec(bundle string) (*specs.Spec, error) {
	abs, err := filepath.Abs(bundle)
	if err != nil {
		return nil, fmt.Errorf("bundle %s: %w", bundle, err)
	}
	if fi, err := os.Stat(abs); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, withKind(ErrInvalidSpec, fmt.Errorf("bundle %s does not exist", abs))
		}
		return nil, fmt.Errorf("bundle %s: %w", abs, err)
	} else if !fi.IsDir() {
		return nil, withKind(ErrInvalidSpec, fmt.Errorf("bundle %s is not a directory", abs))
	}
	path := filepath.Join(abs, ConfigFile)
	data, err := readLimited(path, maxConfigSize)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, withKind(ErrInvalidSpec, fmt.Errorf("bundle %s: JSON specification file %s not found", abs, ConfigFile))
		}
		return nil, fmt.Errorf("bundle %s: %w", abs, err)
	}
	spec, err := ParseSpec(data)
	if err != nil {
		return nil, fmt.Errorf("bundle %s: %s: %w", abs, ConfigFile, err)
	}
	if err := ValidateSpec(spec, abs); err != nil {
		return nil, fmt.Errorf("bundle %s: %w", abs, err)
	}
	return spec, nil
}

func readLimited(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, limit)
	}
	return data, nil
}

// ParseSpec decodes a config.json. Syntax errors carry the line and
// column, which is what a person editing the file needs.
func ParseSpec(data []byte) (*specs.Spec, error) {
	var spec *specs.Spec
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&spec); err != nil {
		return nil, withKind(ErrInvalidSpec, describeJSONError(data, err))
	}
	if dec.More() {
		return nil, withKind(ErrInvalidSpec, errors.New("trailing data after the JSON object"))
	}
	if spec == nil {
		return nil, withKind(ErrInvalidSpec, errors.New("config cannot be null"))
	}
	return spec, nil
}

func describeJSONError(data []byte, err error) error {
	var (
		syn *json.SyntaxError
		typ *json.UnmarshalTypeError
	)
	switch {
	case errors.As(err, &syn):
		line, col := position(data, syn.Offset)
		return fmt.Errorf("invalid JSON at line %d, column %d: %w", line, col, err)
	case errors.As(err, &typ):
		line, col := position(data, typ.Offset)
		return fmt.Errorf("wrong type at line %d, column %d: field %q wants %s, got %s", line, col, typ.Field, typ.Type, typ.Value)
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		return errors.New("file is empty or truncated")
	}
	return err
}

func position(data []byte, offset int64) (line, col int) {
	if offset > int64(len(data)) {
		offset = int64(len(data))
	}
	before := data[:offset]
	// Offset counts the bytes read, the offending one included.
	line = bytes.Count(before, []byte{'\n'}) + 1
	col = int(offset) - bytes.LastIndexByte(before, '\n') - 1
	return line, col
}

// ValidateSpec checks what must hold before any host state is touched:
// a process to run and a root filesystem that exists. The bundle is the
// directory relative paths are resolved against.
func ValidateSpec(spec *specs.Spec, bundle string) error {
	if err := ValidateProcess(spec.Process); err != nil {
		return err
	}
	if spec.Root == nil || spec.Root.Path == "" {
		return withKind(ErrInvalidSpec, errors.New("root.path must be set"))
	}
	rootfs := spec.Root.Path
	if !filepath.IsAbs(rootfs) {
		rootfs = filepath.Join(bundle, rootfs)
	}
	fi, err := os.Stat(rootfs)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return withKind(ErrInvalidSpec, fmt.Errorf("rootfs %s does not exist", rootfs))
	case err != nil:
		return fmt.Errorf("rootfs %s: %w", rootfs, err)
	case !fi.IsDir():
		return withKind(ErrInvalidSpec, fmt.Errorf("rootfs %s is not a directory", rootfs))
	}
	if spec.Linux == nil {
		return withKind(ErrInvalidSpec, errors.New("linux section is missing; berth runs Linux containers only"))
	}
	for _, m := range spec.Mounts {
		if !filepath.IsAbs(m.Destination) {
			return withKind(ErrInvalidSpec, fmt.Errorf("mount destination %q is not an absolute path", m.Destination))
		}
	}
	return nil
}

// ValidateProcess checks a process spec from config.json or `exec -p`.
func ValidateProcess(p *specs.Process) error {
	switch {
	case p == nil:
		return withKind(ErrInvalidSpec, errors.New("process property must not be empty"))
	case len(p.Args) == 0 && p.CommandLine == "":
		return withKind(ErrInvalidSpec, errors.New("process.args must not be empty"))
	case p.Cwd == "":
		return withKind(ErrInvalidSpec, errors.New("process.cwd must not be empty"))
	case !filepath.IsAbs(p.Cwd):
		return withKind(ErrInvalidSpec, fmt.Errorf("process.cwd %q must be an absolute path", p.Cwd))
	}
	for _, e := range p.Env {
		if !strings.Contains(e, "=") {
			return withKind(ErrInvalidSpec, fmt.Errorf("process.env entry %q is not KEY=value", e))
		}
	}
	return nil
}
