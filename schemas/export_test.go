package schemas

import (
	"os"

	"github.com/linkedin/goavro/v2"
)

// registerForTest adds a schema file that is not embedded (an older writer) to the registry.
func registerForTest(path string, n int) (*goavro.Codec, error) {
	if err := load(); err != nil {
		return nil, err
	}
	spec, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	c, err := goavro.NewCodec(string(spec))
	if err != nil {
		return nil, err
	}
	byFingerprint[c.Rabin] = &version{file: path, n: n, codec: c, record: typeName(c)}
	return c, nil
}
