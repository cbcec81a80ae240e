module gantry/opanumber/gotruth

go 1.19
