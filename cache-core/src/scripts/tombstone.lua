-- Prelude of the scripts that must tell a tombstone from a value. A tombstone is what an
-- invalidation by key leaves under the key (codec.rs, `tombstone`); it starts with these three
-- bytes (magic, format version, the tombstone flag alone), and no value does, so three bytes
-- tell, whatever the value's size. codec.rs's tests check this literal against
-- `TOMBSTONE_PREFIX`.
local TOMBSTONE = '\199\1\8'

local function is_tombstone(key)
  return redis.pcall('GETRANGE', key, 0, #TOMBSTONE - 1) == TOMBSTONE
end

