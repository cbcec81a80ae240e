module gantry/replacertruth

go 1.19
