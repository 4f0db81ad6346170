local cut = string.format('%d', tonumber(now_ms()) - tonumber(ARGV[1]))
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', cut, 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
